"""A web tagger for SADCL models, with Gradio (`pip install "sadcl-hf[app]"`).

    python scripts/app.py --model runs/demo/model            # then open http://127.0.0.1:7860

    from sadcl_hf.app import build_app
    build_app("runs/demo/model").queue().launch()

The page takes one or more images (upload or drop), lists each image's tags with their scores, has a threshold
slider (by default the model's calibrated per-class thresholds, `config.thresholds`, apply), and shows, for a chosen
image and tag, the decoder's cross-attention map of that tag over the image. Tags come from the
`multi-label-image-classification` pipeline (its preprocessing, forward and label selection), so they are the ones
`pipeline(...)(image)` returns; moving the threshold re-selects from the stored logits without running the model.
The model runs in Gradio's queue, one request at a time, while re-thresholding runs beside it, so the page never
waits on the model.
"""

from __future__ import annotations

import html
import importlib.metadata
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from .attention_maps import class_attention_maps, render_attention_grid
from .data.images import ImageLoadError
from .pipeline import load_pipeline_image, resolve_thresholds

__all__ = [
    "Tagger", "build_app", "default_examples", "digits_mosaic_examples", "space_requirements", "write_space_folder"
]

_CSS = """
.sadcl-image { margin-bottom: 0.8em; }
.sadcl-image-name { font-weight: 600; }
.sadcl-tag-list { list-style: none; padding-left: 0; margin: 0.2em 0; }
.sadcl-tag { display: flex; align-items: center; gap: 0.6em; }
.sadcl-tag-name { min-width: 8em; }
.sadcl-tag-bar { display: inline-block; height: 0.7em; background: #f97316; border-radius: 3px; }
.sadcl-no-tags { color: #6b7280; }
"""


class Tagger:
    """A SADCL model behind the multi-label pipeline, as the app uses it.

    Args:
        model_name_or_path: a sadcl-hf model folder (or converted checkpoint) or Hub id.
        device: where the model runs (the app is made for the CPU).
    """

    def __init__(self, model_name_or_path: str | os.PathLike, device: str = "cpu"):
        from .inference import load_tagger

        model_name_or_path = os.fspath(model_name_or_path)
        self.pipeline = load_tagger(model_name_or_path, device)
        if getattr(self.pipeline.model.config, "model_type", None) != "sadcl":
            raise ValueError(
                f"{model_name_or_path} holds a {self.pipeline.model.config.model_type!r} model; the tagger needs a "
                "SADCL model (config.json with model_type 'sadcl')"
            )
        self.name = model_name_or_path
        self.model = self.pipeline.model.eval()
        self.label_names = self.pipeline.label_names
        self.has_calibrated_thresholds = getattr(self.model.config, "thresholds", None) is not None

    def thresholds(self, calibrated: bool, threshold: float) -> np.ndarray:
        """[K] decision thresholds: the model's own (`config.thresholds`, else 0.5) or `threshold` for every class."""
        return resolve_thresholds(None if calibrated else float(threshold), self.model.config)

    @torch.no_grad()
    def logits(self, image: PIL.Image.Image) -> list[float]:
        """The pipeline's logits [K] for one image (its preprocessing and forward)."""
        outputs = self.pipeline.forward(self.pipeline.preprocess(image))
        return outputs["logits"][0].float().tolist()

    def tags(self, logits: Sequence[float], thresholds: np.ndarray) -> list[dict[str, Any]]:
        """`[{"label", "score"}]` of the labels that reach their threshold, by decreasing score (the pipeline's own
        selection, [`MultiLabelImageClassificationPipeline.postprocess`])."""
        return self.pipeline.postprocess({"logits": torch.tensor([logits])}, threshold=thresholds)

    def attention_overlay(self, image: PIL.Image.Image, label_index: int) -> PIL.Image.Image:
        """The image beside its cross-attention map for class `label_index`, titled with the label and its score."""
        pixel_values = self.pipeline.preprocess(image)["pixel_values"]
        probabilities, maps = class_attention_maps(self.model, pixel_values)
        title = f"{self.label_names[label_index]} {probabilities[0, label_index].item():.2f}"
        return render_attention_grid(image, maps[0, [label_index]], [title], image_title="input", tile_size=320)


def digits_mosaic_examples(
    directory: str | os.PathLike, num_examples: int = 8, **dataset_options: Any
) -> list[Path]:
    """Writes the first `num_examples` digits-mosaic test images to `directory/test_<i>.png` (kept if present) and
    returns their paths; `dataset_options` go to [`sadcl_hf.data.load_digits_mosaic`]."""
    from .data import load_multilabel_dataset

    directory = Path(directory)
    paths = [directory / f"test_{index}.png" for index in range(num_examples)]
    if all(path.is_file() for path in paths):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    test_split = load_multilabel_dataset("digits-mosaic", split="test", **dataset_options)
    for path, image in zip(paths, test_split.select(range(num_examples))["image"]):
        image.save(path)
    return paths


def default_examples(
    label_names: Sequence[str], directory: str | os.PathLike, num_examples: int = 8
) -> list[Path]:
    """[`digits_mosaic_examples`] for a model whose labels are the digits "0" ... "9" (the demo's), else none."""
    from .data.digits_mosaic import DIGIT_CLASSES

    if num_examples < 1 or tuple(label_names) != DIGIT_CLASSES:
        return []
    return digits_mosaic_examples(directory, num_examples)


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


def build_app(model: str | os.PathLike | Tagger, examples: Sequence[str | os.PathLike] = (), title: str | None = None):
    """The tagger page as a `gradio.Blocks` (not launched: call `.queue().launch()`).

    Args:
        model: a [`Tagger`] or what it loads (model folder, converted checkpoint, Hub id).
        examples: image files offered as one-click examples (e.g. [`digits_mosaic_examples`]).
        title: page heading (default: the model's name).
    """
    try:
        import gradio as gr
    except ImportError as error:
        raise ImportError('the web tagger needs Gradio: pip install "sadcl-hf[app]"') from error

    tagger = model if isinstance(model, Tagger) else Tagger(model)
    label_names = tagger.label_names

    index_of = {name: index for index, name in enumerate(label_names)}

    def label_choices(logits: Sequence[float]) -> list[tuple[str, int]]:
        """Every label of an image, by decreasing score, as (text, class index) dropdown choices."""
        ranked = tagger.tags(logits, np.zeros(len(label_names)))
        return [(f"{tag['label']} ({tag['score']:.2f})", index_of[tag["label"]]) for tag in ranked]

    def render(state: dict | None, calibrated: bool, threshold: float) -> str:
        if not state or not state["names"]:
            return ""
        thresholds = tagger.thresholds(calibrated, threshold)
        tags = [tagger.tags(logits, thresholds) for logits in state["logits"]]
        return _tags_html(state["names"], tags, thresholds)

    def tag_images(files: list[str] | None, calibrated: bool, threshold: float):
        state = {"names": [], "paths": [], "logits": []}
        problems = []
        for path in files or []:
            name = Path(path).name
            try:
                image = load_pipeline_image(path)
            except ImageLoadError as error:
                problems.append(f"**{name}** is not an image sadcl-hf can read: {error.reason}")
                continue
            state["names"].append(name)
            state["paths"].append(path)
            state["logits"].append(tagger.logits(image))
        status = "\n\n".join(problems)
        if files and not state["names"]:
            status += "\n\nUpload image files (PNG, JPEG, WebP, ...)."
        if not state["names"]:
            empty = gr.update(choices=[], value=None)
            return state, status, "", empty, empty, None
        image_choice = gr.update(choices=[(n, i) for i, n in enumerate(state["names"])], value=0)
        choices = label_choices(state["logits"][0])
        overlay = tagger.attention_overlay(load_pipeline_image(state["paths"][0]), choices[0][1])
        return (
            state, status, render(state, calibrated, threshold), image_choice,
            gr.update(choices=choices, value=choices[0][1]), overlay,
        )  # fmt: skip

    def choose_image(state: dict | None, image_index: int | None):
        if not state or image_index is None:
            return gr.update(), None
        choices = label_choices(state["logits"][image_index])
        overlay = tagger.attention_overlay(load_pipeline_image(state["paths"][image_index]), choices[0][1])
        return gr.update(choices=choices, value=choices[0][1]), overlay

    def choose_label(state: dict | None, image_index: int | None, label_index: int | None):
        if not state or image_index is None or label_index is None:
            return None
        return tagger.attention_overlay(load_pipeline_image(state["paths"][image_index]), label_index)

    def move_threshold(state: dict | None, threshold: float):
        return False, render(state, False, threshold)

    calibrated_info = (
        "the thresholds calibrated into the model's config; moving the slider switches to one threshold for all"
        if tagger.has_calibrated_thresholds
        else "this model has no calibrated thresholds (scripts/calibrate_thresholds.py): 0.5 for every class"
    )
    with gr.Blocks(title="SADCL tagger", analytics_enabled=False) as app:
        gr.Markdown(
            f"# SADCL tagger\n`{html.escape(title or tagger.name)}`: {len(label_names)} labels. Drop one or more "
            "images; each gets the labels whose score reaches the threshold. Pick a tag to see where its class query "
            "attends in the image."
        )
        state = gr.State()
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Images", file_count="multiple", elem_id="sadcl-images")
                if examples:
                    gr.Examples(
                        examples=[[os.fspath(path)] for path in examples], inputs=files, label="Example images"
                    )
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
                    label_choice = gr.Dropdown(label="Tag", type="value", elem_id="sadcl-label-choice")
                overlay = gr.Image(label="Attention map", type="pil", interactive=False, elem_id="sadcl-attention")

        model_events = {"concurrency_id": "model", "concurrency_limit": 1}
        # Re-thresholding never waits for the model; one at a time, the latest value last, so the page shows it.
        instant = {
            "concurrency_id": "threshold", "concurrency_limit": 1, "trigger_mode": "always_last",
            "show_progress": "hidden",
        }  # fmt: skip
        files.change(
            tag_images, [files, calibrated, threshold],
            [state, status, tags, image_choice, label_choice, overlay], **model_events,
        )  # fmt: skip
        threshold.input(move_threshold, [state, threshold], [calibrated, tags], **instant)
        calibrated.input(render, [state, calibrated, threshold], tags, **instant)
        image_choice.input(choose_image, [state, image_choice], [label_choice, overlay], **model_events)
        label_choice.input(choose_label, [state, image_choice, label_choice], overlay, **model_events)
    return app


_SPACE_APP = """\
\"\"\"SADCL tagger for {model_id} (written by sadcl-hf's `scripts/push_to_hub.py --space`).\"\"\"

from pathlib import Path

from sadcl_hf.app import build_app

MODEL_ID = {model_id!r}
EXAMPLES = sorted(Path(__file__).parent.glob("examples/*"))

build_app(MODEL_ID, examples=EXAMPLES).queue().launch()
"""

_SPACE_README = """\
---
title: SADCL tagger
emoji: 🏷️
colorFrom: indigo
colorTo: yellow
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
models:
  - {model_id}
pinned: false
---

Multi-label tagging with [{model_id}](https://huggingface.co/{model_id}), a SADCL model (Semantic-Aware Dual
Contrastive Learning, ECAI 2023): drop images, read their tags, move the threshold, look at each tag's attention map.
The app and the `sadcl_hf` package beside it were written by sadcl-hf's `scripts/push_to_hub.py --space`.
"""


def space_requirements() -> list[str]:
    """The Space's requirements.txt lines: sadcl-hf's own dependencies and those of its `app` extra, as installed."""
    requirements = []
    for requirement in importlib.metadata.requires("sadcl-hf") or []:
        name, _, marker = requirement.partition(";")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if extra is None or extra.group(1) == "app":
            requirements.append(name.strip())
    return requirements


def write_space_folder(
    directory: str | os.PathLike, model_id: str, examples: Sequence[str | os.PathLike] = ()
) -> list[str]:
    """Writes a ready Hugging Face Space (Gradio SDK) serving the web tagger for the Hub model `model_id`.

    The folder holds `app.py` (`build_app(model_id)`), a copy of the `sadcl_hf` package (it is not on PyPI),
    `requirements.txt` ([`space_requirements`]), `README.md` (the Space's card: SDK, app file, the model id) and the
    `examples` images under `examples/`. Returns the written paths relative to `directory`.
    """
    import gradio

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text(_SPACE_APP.format(model_id=model_id), encoding="utf-8")
    (directory / "requirements.txt").write_text("\n".join(space_requirements()) + "\n", encoding="utf-8")
    readme = _SPACE_README.format(model_id=model_id, gradio_version=gradio.__version__)
    (directory / "README.md").write_text(readme, encoding="utf-8")
    shutil.copytree(
        Path(__file__).resolve().parent, directory / "sadcl_hf",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True,
    )  # fmt: skip
    for path in examples:
        (directory / "examples").mkdir(exist_ok=True)
        shutil.copyfile(path, directory / "examples" / Path(path).name)
    return sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file())
