"""The multi-label pipeline, scripts/predict.py and the attention-map figures."""

import csv
import functools
import io
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import pipeline

from sadcl_hf import MULTI_LABEL_TASK, MultiLabelImageClassificationPipeline, SADCLConfig, SADCLForImageClassification
from sadcl_hf.data import ImageLoadError, load_image
from sadcl_hf.evaluation import resolve_thresholds, sigmoid
from sadcl_hf.image_processing import image_processor_for_config
from sadcl_hf.serving.attention_maps import class_attention_maps, colorize, render_attention_grid, save_attention_maps
from sadcl_hf.serving.batch import expand_inputs, predict_images

from .conftest import make_tiny_model, random_image, run_script

ROOT = Path(__file__).resolve().parents[1]
LABELS = [f"class_{i}" for i in range(5)]


def reference_scores(tagger, image) -> np.ndarray:
    """Sigmoid scores [K] computed directly with the model and its image processor (float64, as the pipeline)."""
    pixel_values = tagger.image_processor(images=load_image(image), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return sigmoid(tagger.model(pixel_values).logits[0].double().numpy())


def test_task_is_registered_and_returns_labels_reaching_the_threshold(tagger):
    assert isinstance(tagger, MultiLabelImageClassificationPipeline)
    image = random_image(0)
    scores = reference_scores(tagger, image)

    everything = tagger(image, threshold=0.0)
    assert [p["label"] for p in everything] == [LABELS[i] for i in np.argsort(-scores, kind="stable")]
    for prediction in everything:
        assert prediction["score"] == pytest.approx(scores[LABELS.index(prediction["label"])], abs=1e-6)

    threshold = float(np.median(scores))  # about half of the labels reach it
    expected = [LABELS[i] for i in np.argsort(-scores, kind="stable") if scores[i] >= threshold]
    assert [p["label"] for p in tagger(image, threshold=threshold)] == expected
    assert [p["label"] for p in tagger(image, threshold=threshold, top_k=1)] == expected[:1]
    default = [LABELS[i] for i in np.argsort(-scores, kind="stable") if scores[i] >= 0.5]
    assert [p["label"] for p in tagger(image)] == default
    assert tagger(image, threshold=1.0) == []


def test_per_class_thresholds_come_from_the_config_unless_overridden(tmp_path):
    model = make_tiny_model(seed=2).eval()
    processor = image_processor_for_config(model.config)
    image = random_image(1)
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        scores = torch.sigmoid(model(pixel_values).logits)[0].tolist()
    # class 1 and 3 sit just below their score, the others just above: only 1 and 3 are predicted
    model.config.thresholds = [s - 1e-3 if i in (1, 3) else s + 1e-3 for i, s in enumerate(scores)]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    tagger = pipeline(MULTI_LABEL_TASK, model=str(tmp_path), device="cpu")
    np.testing.assert_allclose(tagger.decision_thresholds(), model.config.thresholds)
    assert sorted(p["label"] for p in tagger(image)) == ["class_1", "class_3"]
    assert len(tagger(image, threshold=0.0)) == 5  # a call-time threshold wins over config.thresholds
    per_class = [1.0, 1.0, 0.0, 1.0, 1.0]
    assert [p["label"] for p in tagger(image, threshold=per_class)] == ["class_2"]
    constructed = pipeline(MULTI_LABEL_TASK, model=str(tmp_path), device="cpu", threshold=0.0)
    assert len(constructed(image)) == 5

    tagger.save_pretrained(tmp_path / "saved")  # model + image processor; the thresholds travel in the config
    reloaded = pipeline(MULTI_LABEL_TASK, model=str(tmp_path / "saved"), device="cpu")
    assert sorted(p["label"] for p in reloaded(image)) == ["class_1", "class_3"]


def test_bad_thresholds_are_rejected_with_a_clear_message(tagger):
    image = random_image(2)
    with pytest.raises(ValueError, match="3 values but the model has 5 labels"):
        tagger(image, threshold=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tagger(image, threshold=1.5)
    with pytest.raises(ValueError, match="3 values but the model has 5 labels"):
        pipeline(MULTI_LABEL_TASK, model=tagger.model, image_processor=tagger.image_processor, threshold=[0.1] * 3)
    with pytest.raises(ValueError, match="config.thresholds has 2 values"):
        resolve_thresholds(None, SimpleNamespace(num_labels=5, thresholds=[0.5, 0.5]))


def test_batched_paths_of_any_pixel_mode_match_single_calls(tagger, tmp_path):
    paths = []
    for index, mode in enumerate(["RGB", "L", "CMYK", "P"]):
        path = tmp_path / f"image_{index}.{'jpg' if mode == 'CMYK' else 'png'}"
        random_image(10 + index, size=(80 + 8 * index, 64), mode=mode).save(path)
        paths.append(str(path))
    batched = tagger(paths, batch_size=3, threshold=0.0)
    assert len(batched) == len(paths)
    for path, predictions in zip(paths, batched):
        scores = reference_scores(tagger, path)
        assert {p["label"]: p["score"] for p in predictions} == pytest.approx(dict(zip(LABELS, scores)), abs=1e-5)


def test_transparent_pixels_are_composited_over_white(tagger, tmp_path):
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)  # black but fully transparent
    path = tmp_path / "transparent.png"
    PIL.Image.fromarray(rgba, "RGBA").save(path)
    white = PIL.Image.new("RGB", (64, 64), (255, 255, 255))
    black = PIL.Image.new("RGB", (64, 64), (0, 0, 0))
    got = [p["score"] for p in tagger(str(path), threshold=0.0)]
    assert got == pytest.approx([p["score"] for p in tagger(white, threshold=0.0)], abs=1e-6)
    assert got != pytest.approx([p["score"] for p in tagger(black, threshold=0.0)], abs=1e-6)


def test_exif_orientation_is_applied(tagger, tmp_path):
    upright = random_image(3, size=(96, 48))
    stored = upright.transpose(PIL.Image.Transpose.ROTATE_90)  # orientation 6: rotate 90 degrees clockwise to view
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=100)
    assert load_image(str(path)).size == (96, 48)
    got = [p["score"] for p in tagger(str(path), threshold=0.0)]
    assert got == pytest.approx([p["score"] for p in tagger(load_image(str(path)), threshold=0.0)], abs=1e-6)


def test_unreadable_images_raise_errors_naming_the_file(tagger, tmp_path, monkeypatch):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(ImageLoadError, match="notes.png"):
        tagger(str(not_an_image))
    buffer = io.BytesIO()
    random_image(4, size=(64, 64)).save(buffer, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="truncated.png"):
        tagger(str(truncated))
    large = tmp_path / "large.png"
    random_image(5, size=(64, 64)).save(large)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="decompression"):
        tagger(str(large))


def test_image_urls_are_downloaded(tagger, tmp_path):
    random_image(9, mode="L").save(tmp_path / "gray.png")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        from_url = tagger(f"{base}/gray.png", threshold=0.0, timeout=10)
        from_file = tagger(str(tmp_path / "gray.png"), threshold=0.0)
        assert from_url == from_file
        with pytest.raises(ImageLoadError, match="missing.png.*cannot download"):
            tagger(f"{base}/missing.png", timeout=10)
    finally:
        server.shutdown()
        server.server_close()


def test_label_names_are_checked():
    with pytest.raises(Exception, match=r"classes \[1\] have no name"):
        SADCLConfig.from_preset("tiny", id2label={0: "a", 2: "c"})
    placeholder = SADCLForImageClassification(
        SADCLConfig.from_preset("tiny", num_labels=3, use_pretrained_backbone=False)
    ).eval()
    with pytest.warns(UserWarning, match="no label names"):
        tagger = pipeline(
            MULTI_LABEL_TASK, model=placeholder, image_processor=image_processor_for_config(placeholder.config)
        )
    assert sorted(p["label"] for p in tagger(random_image(6), threshold=0.0)) == ["LABEL_0", "LABEL_1", "LABEL_2"]


# ------------------------------------------------------------------------------------------------- attention maps


def test_attention_grid_colours_the_attended_region():
    image = PIL.Image.new("RGB", (120, 60), (128, 128, 128))
    top_left = np.zeros((4, 4), dtype=np.float32)
    top_left[0, 0] = 1.0
    maps = np.stack([top_left, top_left[::-1, ::-1]])
    grid = render_attention_grid(image, maps, ["a 0.90", "b 0.40"], "input", tile_size=100)
    tile_width, tile_height, gap, title = 100, 50, 4, 22
    assert grid.size == (3 * tile_width + 2 * gap, tile_height + title)
    pixels = np.asarray(grid).astype(int)
    first = pixels[title:, tile_width + gap : 2 * tile_width + gap]
    second = pixels[title:, 2 * (tile_width + gap) :]
    assert first[2, 2, 0] > first[2, 2, 2] + 50 and first[-3, -3, 2] > first[-3, -3, 0] + 50  # red high, blue low
    assert second[-3, -3, 0] > second[-3, -3, 2] + 50 and second[2, 2, 2] > second[2, 2, 0] + 50
    np.testing.assert_array_equal(pixels[title:, :tile_width], 128)  # the plain image tile
    np.testing.assert_array_equal(colorize(np.array([[0.0, 1.0]]))[0], [[0, 0, 128], [128, 0, 0]])


def test_save_attention_maps_writes_one_figure_per_image(tiny_model, tmp_path):
    processor = image_processor_for_config(tiny_model.config)
    images = [random_image(7, size=(120, 90)), random_image(8, size=(50, 100))]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    probabilities, maps = class_attention_maps(tiny_model.eval(), pixel_values)
    assert probabilities.shape == (2, 5) and maps.shape == (2, 5, 4, 4)
    torch.testing.assert_close(maps.sum(dim=(-1, -2)), torch.ones(2, 5))
    with pytest.raises(ValueError, match="2 decoder layers"):
        class_attention_maps(tiny_model, pixel_values, layer=2)

    paths = save_attention_maps(tiny_model, processor, images, tmp_path / "maps", top_k=3, names=["wide", "tall"])
    assert [p.name for p in paths] == ["wide.png", "tall.png"]
    with PIL.Image.open(paths[0]) as wide, PIL.Image.open(paths[1]) as tall:
        assert wide.size == (4 * 256 + 3 * 4, 192 + 22)
        assert tall.size == (4 * 128 + 3 * 4, 256 + 22)


# ---------------------------------------------------------------------------------------------- scripts/predict.py


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    random_image(20).save(folder / "a.png")
    random_image(21, mode="L").save(folder / "nested" / "b.jpg")
    random_image(22, mode="RGBA").save(folder / "nested" / "c.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "readme.txt").write_text("not an image, skipped by extension")
    return folder


def test_predict_script_tags_folders_and_reports_unreadable_files(tagger, tiny_model_dir, image_folder):
    output = image_folder.parent / "preds.jsonl"
    maps_dir = image_folder.parent / "maps"
    result = run_script(
        "predict",
        [
            "--model",
            str(tiny_model_dir),
            str(image_folder),
            "--output",
            str(output),
            "--threshold",
            "0.45",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--attention-maps",
            str(maps_dir),
        ],
    )
    assert result.returncode == 0, result.stderr
    assert "broken.jpg" in result.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [Path(r["image"]).name for r in records] == ["a.png", "broken.jpg", "b.jpg", "c.png"]
    assert "error" in records[1] and "broken.jpg" in records[1]["error"] and "labels" not in records[1]
    for record in (records[0], records[2], records[3]):
        scores = reference_scores(tagger, record["image"])
        assert record["scores"] == pytest.approx(dict(zip(LABELS, scores)), abs=1e-5)
        expected = [LABELS[i] for i in np.argsort(-scores, kind="stable") if scores[i] >= 0.45]
        assert record["labels"] == expected
        assert Path(record["attention_map"]).is_file() and Path(record["attention_map"]).parent == maps_dir
    assert len(list(maps_dir.glob("*.png"))) == 3


def test_predict_script_csv_output_with_a_threshold_file(tiny_model_dir, image_folder, tmp_path):
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({name: (0.0 if name == "class_4" else 1.0) for name in LABELS}))
    output = tmp_path / "preds.csv"
    result = run_script(
        "predict",
        [
            "--model",
            str(tiny_model_dir),
            str(image_folder / "a.png"),
            str(image_folder / "broken.jpg"),
            "--output",
            str(output),
            "--thresholds",
            str(thresholds),
            "--device",
            "cpu",
        ],
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(output.open()))
    assert list(rows[0]) == ["image", "labels", "error", *LABELS]
    assert rows[0]["labels"] == "class_4" and rows[0]["error"] == ""
    assert 0.0 < float(rows[0]["class_0"]) < 1.0
    assert rows[1]["labels"] == "" and "broken.jpg" in rows[1]["error"]


def test_predict_script_fails_cleanly(tiny_model_dir, image_folder, tmp_path):
    output = tmp_path / "preds.jsonl"
    only_broken = ["--model", str(tiny_model_dir), str(image_folder / "broken.jpg"), "--output", str(output)]
    assert run_script("predict", only_broken).returncode == 1
    wrong = tmp_path / "wrong.json"
    wrong.write_text("[0.5, 0.5, 0.5]")
    result = run_script("predict", ["--model", str(tiny_model_dir), str(image_folder), "--thresholds", str(wrong)])
    assert result.returncode == 2
    assert "3 thresholds but the model has 5 labels" in result.stderr
    assert run_script("predict", ["--model", str(tmp_path / "no_such_model"), str(image_folder)]).returncode == 2


def test_predict_images_one_forward_per_batch_with_attention_maps(tagger, image_folder, tmp_path):
    calls = []
    hook = tagger.model.register_forward_hook(lambda module, inputs, outputs: calls.append(outputs.attentions))
    paths = expand_inputs([str(image_folder)])
    try:
        records = list(predict_images(tagger, paths, threshold=0.45, batch_size=2, attention_maps_dir=tmp_path / "m"))
        assert len(calls) == 2 and all(attentions is not None for attentions in calls)  # 3 readable images, batch 2
        calls.clear()
        plain = list(predict_images(tagger, paths, threshold=0.45))
        assert len(calls) == 1 and calls[0] is None  # no attention maps asked: one plain forward for the batch of 8
    finally:
        hook.remove()
    assert [Path(r["image"]).name for r in records] == ["a.png", "broken.jpg", "b.jpg", "c.png"]
    assert [r.get("labels") for r in plain] == [r.get("labels") for r in records]
    assert "error" in records[1]
    for record in (records[0], records[2], records[3]):
        assert record["labels"] == [item["label"] for item in tagger(record["image"], threshold=0.45)]
        assert Path(record["attention_map"]).is_file()
