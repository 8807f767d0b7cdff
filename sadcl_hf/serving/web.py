"""A web tagger for SADCL models, with Gradio (`pip install "sadcl-hf[app]"`).

    python scripts/app.py --model runs/demo/model            # then open http://127.0.0.1:7860

    from sadcl_hf.serving.web import build_app
    build_app("runs/demo/model").queue().launch(max_file_size=DEFAULT_MAX_FILE_SIZE)

The page takes one or more images (upload, drop, or a click on an example thumbnail), shows their thumbnails, lists
each image's tags with their scores, has a threshold slider (by default the model's calibrated per-class thresholds,
`config.thresholds`, apply), and shows, for a chosen image and tag, the decoder's cross-attention map of that tag over
the image (tags below the threshold are marked so). Tags come from the `multi-label-image-classification` pipeline
(its preprocessing, model and label selection), so they are the ones `pipeline(...)(image)` returns; moving the
threshold re-selects from the stored logits without running the model.

Serving: requests that arrive together are batched (Gradio's `batch=True`, up to `max_batch_size` requests) into one
forward that returns the logits and the attention maps of every image; one batch runs at a time, while the attention
map pictures are drawn from the stored maps and re-thresholding is done beside it. Uploaded files are deleted
from Gradio's cache `delete_cache` seconds after upload.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..data.digits_mosaic import default_examples, digits_mosaic_examples
from ..data.images import ImageLoadError
from ..evaluation import resolve_thresholds
from .attention_maps import logits_and_attention_maps, render_attention_grid
from .onnx_runtime import SADCLOnnxModel
from .pipeline import load_pipeline_image

__all__ = [
    "DEFAULT_DELETE_CACHE", "DEFAULT_MAX_BATCH_SIZE", "DEFAULT_MAX_FILE_SIZE", "THUMBNAIL_SIZE", "WebTagger",
    "build_app", "default_examples", "digits_mosaic_examples", "tagger_load_benchmark",
]  # fmt: skip

DEFAULT_MAX_FILE_SIZE = "20mb"
"""Largest upload the page accepts (Gradio's `launch(max_file_size=...)`); larger ones are refused with a message."""
DEFAULT_DELETE_CACHE = (3600, 3600)
"""Gradio's `delete_cache` (every `frequency` seconds, delete the uploads older than `age` seconds)."""
DEFAULT_MAX_BATCH_SIZE = 16
"""Most concurrent requests batched into one forward."""
THUMBNAIL_SIZE = 256
"""Longer side, in pixels, of the thumbnails of tagged uploads (small JPEGs, not the uploaded files)."""
OVERLAY_TILE_SIZE = 320
"""Longer side, in pixels, of each tile of the attention picture."""

_CSS = """
.sadcl-image { margin-bottom: 0.8em; }
.sadcl-image-name { font-weight: 600; }
.sadcl-tag-list { list-style: none; padding-left: 0; margin: 0.2em 0; }
.sadcl-tag { display: flex; align-items: center; gap: 0.6em; }
.sadcl-tag-name { min-width: 8em; }
.sadcl-tag-bar { display: inline-block; height: 0.7em; background: #f97316; border-radius: 3px; }
.sadcl-no-tags { color: #6b7280; }
"""


class WebTagger:
    """A SADCL model behind the multi-label pipeline, as the app uses it.

    Args:
        model_name_or_path: a sadcl-hf model folder (or converted checkpoint) or Hub id.
        device: where the model runs (the app is made for the CPU).
        backend: `"pytorch"`, or `"onnx"` / `"onnx-int8"` for the folder's exported graphs (no attention maps).
    """

    def __init__(self, model_name_or_path: str | os.PathLike, device: str = "cpu", backend: str = "pytorch"):
        from .pipeline import load_pipeline

        model_name_or_path = os.fspath(model_name_or_path)
        self.pipeline = load_pipeline(model_name_or_path, device, backend=backend)
        if getattr(self.pipeline.model.config, "model_type", None) != "sadcl":
            raise ValueError(
                f"{model_name_or_path} holds a {self.pipeline.model.config.model_type!r} model; the tagger needs a "
                "SADCL model (config.json with model_type 'sadcl')"
            )
        self.name = model_name_or_path
        self.backend = backend
        self.model = self.pipeline.model.eval()
        self.label_names = self.pipeline.label_names
        self.has_calibrated_thresholds = getattr(self.model.config, "thresholds", None) is not None
        self.has_attention_maps = not isinstance(self.model, SADCLOnnxModel)

    def thresholds(self, calibrated: bool, threshold: float) -> np.ndarray:
        """[K] decision thresholds: the model's own (`config.thresholds`, else 0.5) or `threshold` for every class."""
        return resolve_thresholds(None if calibrated else float(threshold), self.model.config)

    def load_image(self, path: str | os.PathLike) -> PIL.Image.Image:
        """An uploaded image as the pipeline opens it (JPEGs decoded at the image processor's draft size), so the
        tags are the pipeline's."""
        return self.pipeline.load_image(os.fspath(path))

    def load_overlay_image(self, path: str | os.PathLike) -> PIL.Image.Image:
        """An uploaded image for the attention picture: JPEGs decoded at the smallest DCT scale that still fills
        an `OVERLAY_TILE_SIZE` tile, not at full size (a 12 MP photo: 1/4 of each side)."""
        return load_pipeline_image(os.fspath(path), draft_size=(OVERLAY_TILE_SIZE, OVERLAY_TILE_SIZE))

    def forward(self, images: Sequence[PIL.Image.Image]) -> tuple[np.ndarray, np.ndarray | None]:
        """One forward over `images` (the pipeline's preprocessing): logits [N, K] float32 and, with the PyTorch
        backend, the decoder's cross-attention maps [N, K, h, w] (else None)."""
        pixel_values = self.pipeline.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        if not self.has_attention_maps:
            with torch.inference_mode():
                logits = self.model(pixel_values=pixel_values).logits
            return logits.float().cpu().numpy(), None
        logits, maps = logits_and_attention_maps(self.model, pixel_values)
        return logits.numpy(), maps.numpy()

    def tags(self, logits: Sequence[float], thresholds: np.ndarray) -> list[dict[str, Any]]:
        """`[{"label", "score"}]` of the labels that reach their threshold, by decreasing score (the pipeline's own
        selection, [`MultiLabelImageClassificationPipeline.postprocess`])."""
        return self.pipeline.postprocess({"logits": torch.tensor(np.asarray([logits]))}, threshold=thresholds)

    def label_choices(self, logits: Sequence[float], thresholds: np.ndarray) -> list[tuple[str, int]]:
        """Every label of an image by decreasing score, as (text, class index) choices; the text of a label below
        its threshold says so, e.g. `"cat (0.412, below threshold 0.500)"`."""
        ranked = self.tags(logits, np.zeros(len(self.label_names)))
        index_of = {name: index for index, name in enumerate(self.label_names)}
        choices = []
        for tag in ranked:
            index = index_of[tag["label"]]
            below = "" if tag["score"] >= thresholds[index] else f", below threshold {thresholds[index]:.3f}"
            choices.append((f"{tag['label']} ({tag['score']:.3f}{below})", index))
        return choices

    def attention_overlay(
        self, image: PIL.Image.Image, maps: np.ndarray, logits: Sequence[float], label_index: int
    ) -> PIL.Image.Image:
        """The image beside its cross-attention map (`maps` [K, h, w], from [`WebTagger.forward`]) for class
        `label_index`, titled with the label and its score."""
        score = 1.0 / (1.0 + np.exp(-float(logits[label_index])))
        title = f"{self.label_names[label_index]} {score:.2f}"
        return render_attention_grid(
            image, maps[[label_index]], [title], image_title="input", tile_size=OVERLAY_TILE_SIZE
        )


def _tags_html(names: Sequence[str], tags: Sequence[Sequence[dict[str, Any]]], thresholds: np.ndarray) -> str:
    if len(np.unique(thresholds)) == 1:
        rule = f"threshold {thresholds[0]:.2f} for every class"
    else:
        rule = f"calibrated per-class thresholds ({thresholds.min():.2f}–{thresholds.max():.2f})"
    parts = [f'<div class="sadcl-results"><p class="sadcl-rule">Tags with score ≥ {html.escape(rule)}</p>']
    for name, image_tags in zip(names, tags):
        parts.append(f'<div class="sadcl-image" data-image="{html.escape(name)}">')
        parts.append(f'<div class="sadcl-image-name">{html.escape(name)}</div>')
        if not image_tags:
            parts.append('<p class="sadcl-no-tags">no label reaches its threshold</p>')
        else:
            parts.append('<ul class="sadcl-tag-list">')
            for tag in image_tags:
                label, score = html.escape(tag["label"]), tag["score"]
                parts.append(
                    f'<li class="sadcl-tag" data-label="{label}" data-score="{score:.6f}">'
                    f'<span class="sadcl-tag-name">{label}</span><span class="sadcl-tag-score">{score:.3f}</span>'
                    f'<span class="sadcl-tag-bar" style="width: {score * 8:.2f}em"></span></li>'
                )
            parts.append("</ul>")
        parts.append("</div>")
    parts.append("</div>")
    return "".join(parts)


def build_app(
    model: str | os.PathLike | WebTagger,
    examples: Sequence[str | os.PathLike] = (),
    title: str | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    delete_cache: tuple[int, int] | None = DEFAULT_DELETE_CACHE,
):
    """The tagger page as a `gradio.Blocks` (not launched: call `.queue().launch(max_file_size=...)`).

    Args:
        model: a [`WebTagger`] or what it loads (model folder, converted checkpoint, Hub id).
        examples: image files offered as one-click example thumbnails (e.g. [`digits_mosaic_examples`]).
        title: page heading (default: the model's name).
        max_batch_size: most concurrent tagging requests batched into one forward.
        delete_cache: Gradio's `(frequency, age)` in seconds for deleting uploads from its cache; None keeps them.
    """
    try:
        import gradio as gr
    except ImportError as error:
        raise ImportError('the web tagger needs Gradio: pip install "sadcl-hf[app]"') from error
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")

    tagger = model if isinstance(model, WebTagger) else WebTagger(model)
    label_names = tagger.label_names
    no_maps = "" if tagger.has_attention_maps else f"\n\nAttention maps need the PyTorch backend ({tagger.backend})."

    def render(state: dict | None, calibrated: bool, threshold: float) -> str:
        if not state or not state["names"]:
            return ""
        thresholds = tagger.thresholds(calibrated, threshold)
        tags = [tagger.tags(logits, thresholds) for logits in state["logits"]]
        return _tags_html(state["names"], tags, thresholds)

    def overlay_of(state: dict, image_index: int, label_index: int):
        if state["maps"] is None:
            return None
        image = tagger.load_overlay_image(state["paths"][image_index])
        return tagger.attention_overlay(image, state["maps"][image_index], state["logits"][image_index], label_index)

    def request_outputs(files, state, thumbnail_images, problems, calibrated, threshold):
        """The page's outputs for one tagging request whose readable images were run into `state` (the attention
        map follows in its own event, beside the next batch)."""
        status = "\n\n".join(problems)
        if files and not state["names"]:
            status += "\n\nUpload image files (PNG, JPEG, WebP, ...)."
        if not state["names"]:
            empty = gr.update(choices=[], value=None)
            return state, status, "", [], empty, empty
        image_choice = gr.update(choices=[(n, i) for i, n in enumerate(state["names"])], value=0)
        choices = tagger.label_choices(state["logits"][0], tagger.thresholds(calibrated, threshold))
        return (
            state, status + no_maps, render(state, calibrated, threshold), list(zip(thumbnail_images, state["names"])),
            image_choice,
            gr.update(choices=choices, value=choices[0][1]),
        )  # fmt: skip

    def tag_images(files_batch: list, calibrated_batch: list, threshold_batch: list):
        """Batched (Gradio `batch=True`): every readable image of every request in one [`WebTagger.forward`]."""
        requests, images = [], []
        for files in files_batch:
            names, paths, thumbnail_images, problems = [], [], [], []
            for path in files or []:
                name = Path(path).name
                try:
                    images.append(tagger.load_image(path))
                except ImageLoadError as error:
                    problems.append(f"**{name}** is not an image sadcl-hf can read: {error.reason}")
                    continue
                thumbnail = images[-1].copy()
                thumbnail.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
                names.append(name)
                paths.append(path)
                thumbnail_images.append(thumbnail)
            requests.append((files, names, paths, thumbnail_images, problems))
        logits, maps = tagger.forward(images) if images else (np.zeros((0, len(label_names))), None)
        columns, start = [[] for _ in range(6)], 0
        for (files, names, paths, thumbnail_images, problems), calibrated, threshold in zip(
            requests, calibrated_batch, threshold_batch
        ):
            end = start + len(names)
            state = {
                "names": names, "paths": paths, "logits": logits[start:end].tolist(),
                "maps": None if maps is None else maps[start:end],
            }  # fmt: skip
            outputs = request_outputs(files, state, thumbnail_images, problems, calibrated, threshold)
            for column, value in zip(columns, outputs):
                column.append(value)
            start = end
        return tuple(columns)

    def choose_image(state: dict | None, image_index: int | None, calibrated: bool, threshold: float):
        if not state or image_index is None:
            return gr.update(), None
        choices = tagger.label_choices(state["logits"][image_index], tagger.thresholds(calibrated, threshold))
        return gr.update(choices=choices, value=choices[0][1]), overlay_of(state, image_index, choices[0][1])

    def choose_label(state: dict | None, image_index: int | None, label_index: int | None):
        if not state or image_index is None or label_index is None:
            return None
        return overlay_of(state, image_index, label_index)

    def rethreshold(state: dict | None, image_index: int | None, calibrated: bool, threshold: float):
        """The tags and the attention panel's label choices (which mark the labels below threshold) anew."""
        if not state or image_index is None:
            return render(state, calibrated, threshold), gr.update()
        choices = tagger.label_choices(state["logits"][image_index], tagger.thresholds(calibrated, threshold))
        return render(state, calibrated, threshold), gr.update(choices=choices)

    def move_threshold(state: dict | None, image_index: int | None, threshold: float):
        return False, *rethreshold(state, image_index, False, threshold)

    def pick_example(selected):
        """The clicked example thumbnail (its copy in Gradio's cache) as the upload."""
        return [selected.value["image"]["path"]]

    pick_example.__annotations__["selected"] = gr.SelectData  # a real class: Gradio injects the event by its type

    calibrated_info = (
        "the thresholds calibrated into the model's config; moving the slider switches to one threshold for all"
        if tagger.has_calibrated_thresholds
        else "this model has no calibrated thresholds (scripts/calibrate_thresholds.py): 0.5 for every class"
    )
    with gr.Blocks(title="SADCL tagger", analytics_enabled=False, delete_cache=delete_cache) as app:
        gr.Markdown(
            f"# SADCL tagger\n`{html.escape(title or tagger.name)}`: {len(label_names)} labels. Drop one or more "
            "images or click an example; each gets the labels whose score reaches the threshold. Pick a tag to see "
            "where its class query attends in the image."
        )
        state = gr.State()
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Images", file_count="multiple", elem_id="sadcl-images")
                thumbnails = gr.Gallery(
                    label="Tagged images", columns=4, height="auto", allow_preview=False, interactive=False,
                    format="jpeg", elem_id="sadcl-thumbnails",
                )  # fmt: skip
                if examples:
                    example_gallery = gr.Gallery(
                        value=[(os.fspath(path), Path(path).name) for path in examples], label="Example images",
                        columns=4, height="auto", allow_preview=False, interactive=False, elem_id="sadcl-examples",
                    )  # fmt: skip
                    example_gallery.select(pick_example, None, files, show_progress="hidden")
                calibrated = gr.Checkbox(
                    label="Per-class thresholds of the model",
                    value=tagger.has_calibrated_thresholds,
                    interactive=tagger.has_calibrated_thresholds,
                    info=calibrated_info,
                    elem_id="sadcl-calibrated",
                )
                threshold = gr.Slider(
                    0.0, 1.0, value=0.5, step=0.01, label="Threshold for every class", elem_id="sadcl-threshold"
                )
            with gr.Column(scale=1):
                status = gr.Markdown(elem_id="sadcl-status")
                tags = gr.HTML(elem_id="sadcl-tags", css_template=_CSS)
                with gr.Row():
                    image_choice = gr.Dropdown(label="Image", type="value", elem_id="sadcl-image-choice")
                    label_choice = gr.Dropdown(
                        label="Tag", type="value", elem_id="sadcl-label-choice",
                        info="every label by score; those below their threshold are marked so",
                    )  # fmt: skip
                overlay = gr.Image(label="Attention map", type="pil", interactive=False, elem_id="sadcl-attention")

        # Concurrent tagging requests become one batch, one forward; one batch at a time.
        model_events = {"concurrency_id": "model", "concurrency_limit": 1}
        # Re-thresholding never waits for the model; one at a time, the latest value last, so the page shows it.
        instant = {
            "concurrency_id": "threshold", "concurrency_limit": 1, "trigger_mode": "always_last",
            "show_progress": "hidden",
        }  # fmt: skip
        attention_events = {"concurrency_id": "attention", "concurrency_limit": 1}
        files.change(
            tag_images, [files, calibrated, threshold], [state, status, tags, thumbnails, image_choice, label_choice],
            batch=True, max_batch_size=max_batch_size, api_name="tag_images", **model_events,
        ).success(choose_label, [state, image_choice, label_choice], overlay, **attention_events)  # fmt: skip
        threshold.input(move_threshold, [state, image_choice, threshold], [calibrated, tags, label_choice], **instant)
        calibrated.input(rethreshold, [state, image_choice, calibrated, threshold], [tags, label_choice], **instant)
        image_choice.input(
            choose_image, [state, image_choice, calibrated, threshold], [label_choice, overlay], **attention_events
        )
        label_choice.input(choose_label, [state, image_choice, label_choice], overlay, **attention_events)
    return app


def tagger_load_benchmark(
    url: str,
    image_paths: Sequence[str | os.PathLike],
    clients: Sequence[int] = (1, 16, 50),
    requests_per_client: int | Sequence[int] = 8,
    threshold: float = 0.5,
    timeout: float = 300.0,
) -> dict[int, dict[str, float]]:
    """Requests/s and latency of a running tagger (its `tag_images` API) under load.

    For each number of clients, that many threads, each with its own HTTP connection, send `requests_per_client`
    requests in a closed loop (one image each, taken round-robin from `image_paths`) and wait for each answer, after
    one untimed request. A request is what a browser does: upload the file (`/gradio_api/upload`), join the queue
    (`/gradio_api/call/tag_images`), read the event stream to its `complete` event. Raw HTTP rather than
    `gradio_client`, whose own work per request (about 0.2 CPU-seconds here, five times the tagger's) would be
    measured instead of the tagger's when both share a machine.

    Returns `{clients: {"requests", "seconds", "requests_per_s", "p50_s", "p95_s"}}` (latency percentiles in
    seconds, upload included).

    Raises:
        RuntimeError: the tagger answered a request with an error event.
    """
    from concurrent.futures import ThreadPoolExecutor
    from time import perf_counter

    import httpx

    api = url.rstrip("/") + "/gradio_api"
    contents = [Path(path).read_bytes() for path in image_paths]

    def tag(session: httpx.Client, index: int) -> None:
        name = Path(image_paths[index]).name
        [uploaded] = session.post(f"{api}/upload", files=[("files", (name, contents[index]))]).raise_for_status().json()
        data = [[{"path": uploaded, "orig_name": name, "meta": {"_type": "gradio.FileData"}}], False, threshold]
        event_id = session.post(f"{api}/call/tag_images", json={"data": data}).raise_for_status().json()["event_id"]
        with session.stream("GET", f"{api}/call/tag_images/{event_id}") as events:
            event = None
            for line in events.raise_for_status().iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event in ("complete", "error"):
                    if event == "error":
                        raise RuntimeError(f"the tagger answered {name} with an error: {line.removeprefix('data: ')}")
                    return
        raise RuntimeError(f"the tagger's event stream for {name} ended without an answer")

    if isinstance(requests_per_client, int):
        requests_per_client = [requests_per_client] * len(clients)
    with httpx.Client(timeout=timeout) as session:  # untimed: the server's first request (model, thread pools)
        tag(session, 0)
    results = {}
    for num_clients, num_requests in zip(clients, requests_per_client):

        def run_client(client_index: int, num_requests: int = num_requests, num_clients: int = num_clients):
            latencies = []
            with httpx.Client(timeout=timeout) as session:
                for request_index in range(num_requests):
                    start = perf_counter()
                    tag(session, (client_index + request_index * num_clients) % len(image_paths))
                    latencies.append(perf_counter() - start)
            return latencies

        start = perf_counter()
        with ThreadPoolExecutor(num_clients) as pool:
            latencies = [latency for done in pool.map(run_client, range(num_clients)) for latency in done]
        seconds = perf_counter() - start
        results[num_clients] = {
            "requests": len(latencies), "seconds": seconds, "requests_per_s": len(latencies) / seconds,
            "p50_s": float(np.percentile(latencies, 50)), "p95_s": float(np.percentile(latencies, 95)),
        }  # fmt: skip
    return results
