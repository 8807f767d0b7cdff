"""The web tagger as a server, in-process on a free localhost port, through `gradio_client` and raw HTTP: concurrent
requests batched into one forward with the tags of sequential ones, large JPEGs decoded as the pipeline decodes them
with small thumbnails back, the upload size limit, the cache cleanup, the load benchmark."""

import re
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest
import torch
from gradio_client import Client, handle_file

from sadcl_hf import SADCLConfig, SADCLForImageClassification
from sadcl_hf.image_processing import image_processor_for_config
from sadcl_hf.serving.pipeline import load_pipeline
from sadcl_hf.serving.web import DEFAULT_DELETE_CACHE, THUMBNAIL_SIZE, WebTagger, build_app, tagger_load_benchmark

LABELS = ["cat", "dog", "tree", "car", "boat", "bird"]
NUM_REQUESTS = 6


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serving")
    torch.manual_seed(5)
    config = SADCLConfig.from_preset("tiny", id2label=dict(enumerate(LABELS)), use_pretrained_backbone=False)
    model = SADCLForImageClassification(config).eval()
    model.save_pretrained(folder / "model")
    image_processor_for_config(model.config).save_pretrained(folder / "model")
    paths = []
    for index in range(NUM_REQUESTS):
        image = PIL.Image.new("RGB", (90 + 7 * index, 80), (40 * index, 90, 200 - 30 * index))
        PIL.ImageDraw.Draw(image).ellipse((5 + 6 * index, 10, 60, 70), fill=(230, 180 - 20 * index, 40))
        paths.append(folder / f"image_{index}.png")
        image.save(paths[-1])
    return folder / "model", paths


def _launch(app, **launch_options) -> str:
    port = _free_port()
    app.queue().launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options
    )
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def tagger(model_and_images):
    return WebTagger(model_and_images[0])


@pytest.fixture(scope="module")
def server(model_and_images, tagger):
    """The app (default cache cleanup) with a 20 kB upload limit; its tagger's model forward records the batch size
    of each call (the first call waits 1 s so that the others queue up)."""
    _, paths = model_and_images
    batch_sizes = []
    forward = tagger.model.forward

    def recorded_forward(*args, **kwargs):
        batch_sizes.append(len(kwargs["pixel_values"]))
        if len(batch_sizes) == 1:
            time.sleep(1.0)
        return forward(*args, **kwargs)

    tagger.model.forward = recorded_forward
    app = build_app(tagger, examples=[paths[0]], max_batch_size=8)
    url = _launch(app, max_file_size="20kb")
    try:
        yield app, url, batch_sizes
    finally:
        app.close()
        tagger.model.forward = forward


def test_concurrent_requests_are_batched_and_tag_as_sequential_ones(model_and_images, server):
    model_dir, paths = model_and_images
    _, url, batch_sizes = server
    pipeline = load_pipeline(str(model_dir))
    # Threshold 0: every label with its score, so each image's scores are compared, not only its tag set.
    sequential = [pipeline(str(path), threshold=0.0) for path in paths]
    scores = np.array([[tag["score"] for tag in sorted(tags, key=lambda tag: tag["label"])] for tags in sequential])
    assert np.abs(scores - scores[0]).max() > 1e-3  # the images are told apart

    client = Client(url, verbose=False)
    batch_sizes.clear()
    jobs = [client.submit([handle_file(str(path))], False, 0.0, api_name="/tag_images") for path in paths]
    results = [job.result(timeout=120) for job in jobs]
    assert sum(batch_sizes) == NUM_REQUESTS and len(batch_sizes) < NUM_REQUESTS, batch_sizes
    assert max(batch_sizes) >= 2
    for result, tags in zip(results, sequential):
        shown = re.findall(r'data-label="([^"]+)" data-score="([0-9.]+)"', result[1])
        assert [label for label, _ in shown] == [tag["label"] for tag in tags]
        np.testing.assert_allclose([float(score) for _, score in shown], [tag["score"] for tag in tags], atol=1e-5)
        # Each answer has its own label choices for the attention panel (all labels, ranked as the tags).
        assert [text.split(" (")[0] for text, _ in result[4]["choices"]] == [tag["label"] for tag in tags]


def test_upload_over_max_file_size_is_refused(model_and_images, server, tmp_path):
    _, url, _ = server
    large = tmp_path / "large.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)).save(large)
    assert large.stat().st_size > 20_480
    with open(large, "rb") as handle:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": ("large.png", handle)}, timeout=30)
    assert response.status_code == 413
    assert "File size exceeded maximum allowed size of 20480 bytes" in response.text
    _, paths = model_and_images
    with open(paths[0], "rb") as handle:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": ("small.png", handle)}, timeout=30)
    assert response.status_code == 200


def test_uploads_are_deleted_from_the_cache_examples_kept(model_and_images, server, tagger):
    assert server[0].delete_cache == DEFAULT_DELETE_CACHE
    _, paths = model_and_images
    app = build_app(tagger, examples=[paths[0]], delete_cache=(1, 2))  # every second, uploads older than 2 s
    url = _launch(app)
    try:
        _check_cache_cleanup(app, url, paths[1])
    finally:
        app.close()


def _check_cache_cleanup(app, url: str, image_path: Path) -> None:
    with open(image_path, "rb") as handle:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": ("upload.png", handle)}, timeout=30)
    uploaded = Path(response.json()[0])
    assert uploaded.is_file()
    examples = [path for component in app.blocks.values() for path in getattr(component, "keep_in_cache", ())]
    assert examples and all(Path(path).is_file() for path in examples)
    deadline = time.monotonic() + 20
    while uploaded.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not uploaded.is_file(), f"{uploaded} is still in the cache after 20 s"
    assert all(Path(path).is_file() for path in examples)  # the example thumbnails keep working


def test_tagger_load_benchmark_reports_each_client_count(model_and_images, server):
    _, url, batch_sizes = server
    _, paths = model_and_images
    batch_sizes.clear()
    results = tagger_load_benchmark(url, paths[:2], clients=(1, 3), requests_per_client=(2, 1))
    assert sorted(results) == [1, 3] and [results[1]["requests"], results[3]["requests"]] == [2, 3]
    assert sum(batch_sizes) == 1 + 5  # the untimed first request, then every timed one reached the model
    for result in results.values():
        assert 0 < result["p50_s"] <= result["p95_s"] and result["requests_per_s"] > 0


def test_large_jpeg_is_tagged_as_the_pipeline_tags_it_with_a_small_thumbnail(model_and_images, tagger, tmp_path):
    """A photo-sized JPEG: decoded at the processor's draft size as the pipeline decodes it (same scores), and the
    thumbnail sent back is a small JPEG, not the uploaded file."""
    model_dir, _ = model_and_images
    photo = tmp_path / "photo.jpg"
    pixels = np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).resize((1600, 1200), PIL.Image.Resampling.BICUBIC).save(photo, quality=90)
    tags = load_pipeline(str(model_dir))(str(photo), threshold=0.0)
    app = build_app(tagger)
    url = _launch(app)
    try:
        result = Client(url, verbose=False).predict([handle_file(str(photo))], False, 0.0, api_name="/tag_images")
    finally:
        app.close()
    shown = re.findall(r'data-label="([^"]+)" data-score="([0-9.]+)"', result[1])
    assert [label for label, _ in shown] == [tag["label"] for tag in tags]
    np.testing.assert_allclose([float(score) for _, score in shown], [tag["score"] for tag in tags], atol=1e-5)
    [thumbnail] = result[2]  # the API outputs: status, tags, thumbnails, image choice, label choice
    with PIL.Image.open(thumbnail["image"]) as image:
        # from the drafted decode (1/8 of each side for this 64 px model), at most THUMBNAIL_SIZE, aspect kept
        assert image.format == "JPEG" and image.size == (200, 150) and max(image.size) <= THUMBNAIL_SIZE
