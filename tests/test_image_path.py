"""One image path: bounded URL downloads (issue 17.5), the stock `pipeline("image-classification")` of a SADCL model
loading images exactly as the multi-label pipeline (17.6), with and without sadcl-hf installed."""

import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageFile
import pytest
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, pipeline

from sadcl_hf import MULTI_LABEL_TASK
from sadcl_hf.data import ImageLoadError
from sadcl_hf.data.images import DEFAULT_MAX_URL_BYTES, DEFAULT_URL_TIMEOUT, fetch_url
from sadcl_hf.data.pipeline_image_classification import CUSTOM_PIPELINES, SADCLImageClassificationPipeline

LABELS = [f"class_{i}" for i in range(5)]


# ----------------------------------------------------------------------------------------- loopback servers (17.5)


@contextmanager
def loopback_server(respond):
    """A TCP server on 127.0.0.1 running `respond(connection, stop)` for each connection in a thread; yields its
    `http://127.0.0.1:PORT`. Every connection is closed and the thread joined on exit."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    connections = []

    def serve():
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connections.append(connection)
            threading.Thread(target=respond, args=(connection, stop), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in connections:
            connection.close()
        listener.close()


def never_answers(connection, stop):
    """Accepts the connection and sends nothing."""
    stop.wait(30)


def endless_body(connection, stop):
    """Answers 200 and streams image bytes without end (no Content-Length) until the client goes away."""
    connection.settimeout(5)
    try:
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
        chunk = b"\x89PNG" + bytes(65532)
        while not stop.is_set():
            connection.sendall(chunk)
    except OSError:  # the client closed the connection
        pass


def announces_too_much(connection, stop):
    connection.settimeout(5)
    try:
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 900000000\r\nConnection: close\r\n\r\n\x89PNG")
        stop.wait(30)
    except OSError:
        pass


def test_url_bounds_have_sensible_defaults():
    assert DEFAULT_URL_TIMEOUT == 10.0 and DEFAULT_MAX_URL_BYTES == 50 * 2**20


def test_a_url_that_never_answers_fails_after_the_timeout(tagger, stock_classifier):
    with loopback_server(never_answers) as base:
        for call in (
            lambda: fetch_url(f"{base}/silent.png", timeout=0.5),
            lambda: tagger(f"{base}/silent.png", timeout=0.5),
            lambda: stock_classifier(f"{base}/silent.png", timeout=0.5),
        ):
            start = time.monotonic()
            with pytest.raises(ImageLoadError, match=r"silent\.png.*no answer within 0\.5 s"):
                call()
            assert time.monotonic() - start < 5


def test_an_endless_body_fails_once_the_byte_cap_is_exceeded(tagger, stock_classifier, tiny_model_dir):
    with loopback_server(endless_body) as base:
        url = f"{base}/endless.png"
        with pytest.raises(ImageLoadError, match=r"endless\.png.*exceeds the limit of 100000 bytes"):
            fetch_url(url, max_bytes=100_000)
        with pytest.raises(ImageLoadError, match="exceeds the limit of 300000 bytes"):
            tagger(url, max_bytes=300_000)
        with pytest.raises(ImageLoadError, match="exceeds the limit of 200000 bytes"):
            stock_classifier(url, max_bytes=200_000)
        bounded = pipeline(MULTI_LABEL_TASK, model=str(tiny_model_dir), device="cpu", max_bytes=150_000)
        with pytest.raises(ImageLoadError, match="exceeds the limit of 150000 bytes"):
            bounded(url)
    with loopback_server(announces_too_much) as base:
        start = time.monotonic()
        with pytest.raises(ImageLoadError, match="announces 900000000 bytes"):
            tagger(f"{base}/huge.png")  # default cap, refused from the header at once
        assert time.monotonic() - start < 5


# --------------------------------------------------------------------------------- odd images, bombs (17.6)


def png_bytes(width: int, height: int) -> bytes:
    """A valid black 8-bit grayscale PNG of any size, compressed row by row (a 12000x12000 one is ~140 KB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 + black pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def odd_images(folder: Path) -> dict[str, str]:
    """16-bit grayscale, transparent palette, CMYK, EXIF-rotated and RGBA images as files."""
    rng = np.random.default_rng(0)
    files = {}
    grey16 = (np.linspace(0, 65535, 70 * 90).reshape(70, 90)).astype(np.uint16)
    files["grey16.png"] = PIL.Image.fromarray(grey16)
    palette = PIL.Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).quantize(16)
    palette.info["transparency"] = 3
    files["palette_transparent.png"] = palette
    files["cmyk.jpg"] = PIL.Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).convert("CMYK")
    rgba = rng.integers(0, 256, (50, 70, 4), dtype=np.uint8)
    files["rgba.png"] = PIL.Image.fromarray(rgba, "RGBA")
    paths = {}
    for name, image in files.items():
        path = folder / name
        image.save(path, transparency=3) if name == "palette_transparent.png" else image.save(path)
        paths[name] = str(path)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    rotated = folder / "rotated.jpg"
    PIL.Image.fromarray(rng.integers(0, 256, (90, 48, 3), dtype=np.uint8)).save(rotated, exif=exif, quality=95)
    paths["rotated.jpg"] = str(rotated)
    return paths


@pytest.fixture(scope="module")
def stock_classifier(tiny_model_dir):
    return pipeline("image-classification", model=str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd_images")
    paths = odd_images(folder)
    (folder / "bomb.png").write_bytes(png_bytes(12000, 12000))
    (folder / "notes.png").write_text("not an image")
    float_tiff = folder / "float.tif"
    PIL.Image.fromarray(np.ones((20, 30), dtype=np.float32)).save(float_tiff)
    return {"folder": folder, "images": paths}


def multi_label_scores(tagger, path) -> dict[str, float]:
    return {item["label"]: item["score"] for item in tagger(path, threshold=0.0)}


def test_stock_pipeline_of_a_sadcl_model_loads_images_as_the_multi_label_pipeline(
    tagger, stock_classifier, image_files
):
    assert type(stock_classifier) is SADCLImageClassificationPipeline
    for name, path in image_files["images"].items():
        stock = {item["label"]: item["score"] for item in stock_classifier(path, top_k=5)}
        assert stock == pytest.approx(multi_label_scores(tagger, path), abs=1e-5), name
    # transformers' own loading scores the 16-bit and transparent palette images differently (issue 17.6)
    from transformers.image_utils import load_image as transformers_load_image

    grey16 = image_files["images"]["grey16.png"]
    transformers_scores = stock_classifier(transformers_load_image(grey16), top_k=5)
    assert {p["label"]: p["score"] for p in transformers_scores} != pytest.approx(
        multi_label_scores(tagger, grey16), abs=1e-3
    )


def test_stock_pipeline_refuses_what_the_multi_label_pipeline_refuses(
    tagger, stock_classifier, image_files, monkeypatch
):
    folder = image_files["folder"]
    assert (folder / "bomb.png").stat().st_size < 200_000
    decoded = []
    original_load = PIL.ImageFile.ImageFile.load
    monkeypatch.setattr(
        PIL.ImageFile.ImageFile, "load", lambda image: decoded.append(image.size) or original_load(image)
    )
    for classify in (tagger, stock_classifier):
        with pytest.raises(ImageLoadError, match=r"bomb\.png: 12000x12000 = 144000000 pixels exceeds"):
            classify(str(folder / "bomb.png"))
        with pytest.raises(ImageLoadError, match=r"notes\.png: not a recognised image format"):
            classify(str(folder / "notes.png"))
        with pytest.raises(ImageLoadError, match=r"float\.tif: floating-point pixels"):
            classify(str(folder / "float.tif"))
    assert (12000, 12000) not in decoded  # refused from the header, never decoded


def test_other_models_keep_transformers_image_classification(tmp_path):
    config = ViTConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, num_labels=3)  # fmt: skip
    ViTForImageClassification(config).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path), device="cpu")
    assert not classifier.loads_images_with_the_package()
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(Exception) as raised:
        classifier(str(path))
    assert not isinstance(raised.value, ImageLoadError)  # transformers' own loading and errors


def test_saved_model_names_its_image_classification_pipeline_for_remote_code(tiny_model_dir):
    saved = json.loads((tiny_model_dir / "config.json").read_text())
    assert saved["custom_pipelines"] == CUSTOM_PIPELINES
    assert (tiny_model_dir / "pipeline_image_classification.py").is_file() and (tiny_model_dir / "images.py").is_file()
    assert "from sadcl_hf" not in (tiny_model_dir / "images.py").read_text()


def test_a_model_saved_before_keeps_loading(tiny_model_dir, tmp_path, image_files, tagger):
    """A folder without `custom_pipelines` (saved by an earlier sadcl-hf) still serves both pipelines."""
    old = tmp_path / "old_model"
    old.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.name not in ("pipeline_image_classification.py", "images.py"):
            (old / item.name).write_bytes(item.read_bytes())
    config = json.loads((old / "config.json").read_text())
    del config["custom_pipelines"]
    (old / "config.json").write_text(json.dumps(config))
    path = image_files["images"]["grey16.png"]
    stock = pipeline("image-classification", model=str(old), device="cpu")(path, top_k=5)
    assert {p["label"]: p["score"] for p in stock} == pytest.approx(multi_label_scores(tagger, path), abs=1e-5)


def test_remote_code_stock_pipeline_without_sadcl_hf_loads_images_as_the_package(tiny_model_dir, image_files, tagger):
    folder = image_files["folder"]
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["sadcl_hf"] = None  # `import sadcl_hf` now raises ImportError
        import PIL.ImageFile
        from transformers import pipeline
        decoded = []
        original_load = PIL.ImageFile.ImageFile.load
        PIL.ImageFile.ImageFile.load = lambda image: decoded.append(image.size) or original_load(image)
        classifier = pipeline("image-classification", model={str(tiny_model_dir)!r}, trust_remote_code=True,
                              device="cpu")
        result = {{"class": type(classifier).__module__ + "." + type(classifier).__name__, "scores": {{}},
                   "errors": {{}}}}
        for name, path in {image_files["images"]!r}.items():
            result["scores"][name] = {{p["label"]: p["score"] for p in classifier(path, top_k=5)}}
        for name in ("bomb.png", "notes.png", "float.tif"):
            try:
                classifier({str(folder)!r} + "/" + name)
            except Exception as error:
                result["errors"][name] = type(error).__name__ + ": " + str(error)
        result["bomb_decoded"] = (12000, 12000) in decoded
        print("RESULT", json.dumps(result))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.split("RESULT ", 1)[1])
    assert result["class"].startswith("transformers_modules.") and result["class"].endswith(
        "pipeline_image_classification.SADCLImageClassificationPipeline"
    )
    for name, path in image_files["images"].items():
        assert result["scores"][name] == pytest.approx(multi_label_scores(tagger, path), abs=1e-5), name
    for name in ("bomb.png", "notes.png", "float.tif"):
        with pytest.raises(ImageLoadError) as expected:
            tagger(str(folder / name))
        assert result["errors"][name] == f"ImageLoadError: {expected.value}"
    assert not result["bomb_decoded"]
