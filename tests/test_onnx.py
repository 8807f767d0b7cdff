"""ONNX export: onnxruntime matches PyTorch, dynamic batch axis, metadata; the ONNX Runtime serving backend (same
tags and scores as PyTorch); static int8 (QDQ around every Conv, bounded mAP change on a trained model)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

from sadcl_hf.data import load_multilabel_dataset
from sadcl_hf.serving.backends import BACKENDS, ONNX_BACKENDS
from sadcl_hf.serving.onnx_export import (
    ONNX_FILE_NAME,
    count_quantized_convolutions,
    export_onnx,
    onnx_session,
    verify_onnx,
)
from sadcl_hf.serving.onnx_runtime import SADCLOnnxModel
from sadcl_hf.serving.pipeline import load_pipeline

from .conftest import make_tiny_model, run_script

ROOT = Path(__file__).resolve().parents[1]


def test_export_script_matches_pytorch_for_any_batch_size(tiny_model_dir, tmp_path):
    output = tmp_path / "onnx" / "model.onnx"
    result = run_script("export_onnx", [tiny_model_dir, output, "--opset", "17"])
    assert result.returncode == 0, result.stderr
    assert "onnxruntime matches PyTorch" in result.stdout

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (model_input,), (model_output,) = session.get_inputs(), session.get_outputs()
    assert (model_input.name, model_output.name) == ("pixel_values", "logits")
    assert model_input.shape == ["batch", 3, 64, 64] and model_output.shape == ["batch", 5]

    model = AutoModelForImageClassification.from_pretrained(tiny_model_dir).eval()
    for batch_size in (1, 4):
        pixel_values = torch.randn(batch_size, 3, 64, 64, generator=torch.Generator().manual_seed(batch_size))
        with torch.no_grad():
            expected = model(pixel_values).logits.numpy()
        actual = session.run(None, {"pixel_values": pixel_values.numpy()})[0]
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)

    metadata = {entry.key: json.loads(entry.value) for entry in onnx.load(str(output)).metadata_props}
    assert metadata["id2label"] == {str(i): f"class_{i}" for i in range(5)}
    assert metadata["thresholds"] is None and metadata["image_size"] == 64 and len(metadata["image_mean"]) == 3


def test_export_keeps_the_model_mode_and_verify_catches_mismatches(tmp_path):
    model = make_tiny_model(seed=5, thresholds=[0.3] * 5).train()
    path = export_onnx(model, tmp_path / "model.onnx")
    assert model.training  # restored after the export, which traces in eval mode
    assert verify_onnx(model, path) <= 1e-4  # compares in eval mode
    assert model.training
    metadata = {entry.key: json.loads(entry.value) for entry in onnx.load(str(path)).metadata_props}
    assert metadata["thresholds"] == [0.3] * 5

    other = make_tiny_model(seed=6)
    with pytest.raises(AssertionError, match="ONNX logits differ from PyTorch"):
        verify_onnx(other, path)


@pytest.fixture(scope="module")
def exported_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A copy of the tiny model folder with onnx/model.onnx written by the export script's default output."""
    folder = tmp_path_factory.mktemp("onnx_model") / "model"
    shutil.copytree(tiny_model_dir, folder)
    result = run_script("export_onnx", [folder])
    assert result.returncode == 0, result.stderr
    assert (folder / ONNX_FILE_NAME).is_file()
    return folder


def _images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (80, 72, 3), dtype=np.uint8)) for _ in range(count)]


def test_onnx_backend_pipeline_gives_the_pytorch_tags_and_scores(exported_model_dir):
    images = _images(5)
    eager = pipeline("multi-label-image-classification", model=str(exported_model_dir), device="cpu")
    onnx_tagger = pipeline("multi-label-image-classification", model=str(exported_model_dir), backend="onnx")
    direct = pipeline(
        "multi-label-image-classification", model=SADCLOnnxModel.from_pretrained(exported_model_dir),
        image_processor=str(exported_model_dir),
    )  # fmt: skip
    assert isinstance(onnx_tagger.model, SADCLOnnxModel) and isinstance(direct.model, SADCLOnnxModel)
    expected = eager(images, threshold=0.0, batch_size=2)
    scores = np.array([[item["score"] for item in sorted(row, key=lambda i: i["label"])] for row in expected])
    # A threshold in the widest gap between the middle scores splits the labels about evenly (informative tags)
    # and sits away from every score, so float rounding cannot flip a tag.
    ordered = np.sort(scores.ravel())
    middle = ordered[len(ordered) // 4 : 3 * len(ordered) // 4 + 1]
    gap = int(np.argmax(np.diff(middle)))
    threshold = float(middle[gap] + middle[gap + 1]) / 2
    assert middle[gap + 1] - middle[gap] > 1e-3
    for tagger in (onnx_tagger, direct):
        actual = tagger(images, threshold=0.0, batch_size=2)
        for expected_row, actual_row in zip(expected, actual):
            assert [item["label"] for item in actual_row] == [item["label"] for item in expected_row]
            np.testing.assert_allclose(
                [item["score"] for item in actual_row], [item["score"] for item in expected_row], atol=1e-4, rtol=0
            )
        tags = [[item["label"] for item in row] for row in tagger(images, threshold=threshold)]
        assert tags == [[item["label"] for item in row] for row in eager(images, threshold=threshold)]


def test_onnx_backends_load_without_the_pytorch_weights(exported_model_dir, tmp_path):
    """The backend table loads an ONNX backend's graph only: a folder without model.safetensors still tags, through
    `pipeline(..., backend="onnx")` and `load_pipeline`, with the scores of the full folder."""
    folder = tmp_path / "model"
    shutil.copytree(exported_model_dir, folder)
    (folder / "model.safetensors").unlink()
    images = _images(3)
    expected = pipeline("multi-label-image-classification", model=str(exported_model_dir), backend="onnx")
    expected_scores = [[item["score"] for item in row] for row in expected(images, threshold=0.0)]
    for tagger in (
        pipeline("multi-label-image-classification", model=str(folder), backend="onnx"),
        load_pipeline(str(folder), backend="onnx"),
    ):
        assert isinstance(tagger.model, SADCLOnnxModel)
        assert [[item["score"] for item in row] for row in tagger(images, threshold=0.0)] == expected_scores
    with pytest.raises(OSError, match="model.safetensors|pytorch_model.bin"):
        pipeline("multi-label-image-classification", model=str(folder))  # the PyTorch backend needs them
    assert list(BACKENDS) == ["pytorch", *ONNX_BACKENDS] == ["pytorch", "onnx", "onnx-int8"]


def test_onnx_backend_errors_name_the_missing_file(tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="onnx/model_quantized.onnx.*export_onnx.py"):
        SADCLOnnxModel.from_pretrained(tiny_model_dir, file_name="onnx/model_quantized.onnx")
    with pytest.raises(ValueError, match="backend must be"):
        pipeline("multi-label-image-classification", model=str(tiny_model_dir), backend="tensorrt")


def test_predict_script_onnx_backend_writes_the_pytorch_predictions(exported_model_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(_images(3)):
        image.save(folder / f"{index}.png")
    records = {}
    for backend in ("pytorch", "onnx"):
        output = tmp_path / f"{backend}.jsonl"
        command = [
            sys.executable, str(ROOT / "scripts" / "predict.py"), "--model", str(exported_model_dir), str(folder),
            "--output", str(output), "--backend", backend, "--threshold", "0.5", "--device", "cpu",
        ]  # fmt: skip
        if backend == "onnx":  # worker processes decode while ONNX Runtime scores: the same records
            command += ["--num-workers", "2", "--batch-size", "2"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        records[backend] = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["labels"] for r in records["onnx"]] == [r["labels"] for r in records["pytorch"]]
    for onnx_record, eager_record in zip(records["onnx"], records["pytorch"]):
        for name, score in eager_record["scores"].items():
            assert abs(onnx_record["scores"][name] - score) <= 1e-4


def _linear_probe_model(folder: Path, options: dict) -> None:
    """A tiny model whose group-wise classifier is fitted (per-class logistic regression, scikit-learn) on the
    label features of digits-mosaic training images: a trained classifier in seconds, saved to `folder`."""
    from sklearn.linear_model import LogisticRegression

    from sadcl_hf.image_processing import evaluation_dataloader, image_processor_for_config

    model = make_tiny_model(num_labels=10, seed=2).eval()
    model.config.id2label = {index: str(index) for index in range(10)}
    model.config.label2id = {str(index): index for index in range(10)}
    train = load_multilabel_dataset("digits-mosaic", split="train", **options)
    batches = list(evaluation_dataloader(model.config, train))
    targets = torch.cat([batch["labels"] for batch in batches]).numpy()
    with torch.no_grad():
        features = torch.cat([model(batch["pixel_values"]).label_features for batch in batches]).numpy()
        for index in range(10):
            probe = LogisticRegression(max_iter=500).fit(features[:, index], targets[:, index])
            model.classifier.weight[index] = torch.from_numpy(probe.coef_[0])
            model.classifier.bias[index] = float(probe.intercept_[0])
    model.save_pretrained(folder)
    image_processor_for_config(model.config).save_pretrained(folder)
    (folder / "README.md").write_text("# probe\n")


def test_static_int8_quantizes_the_convolutions_and_keeps_the_tags(tmp_path):
    """`--quantize int8` calibrated on digits-mosaic's validation split, on a model with a trained classifier."""
    options = {"num_train": 256, "num_validation": 64, "num_test": 128, "cache_dir": str(tmp_path / "cache")}
    model_dir = tmp_path / "model"
    _linear_probe_model(model_dir, options)
    result = run_script("export_onnx", [
        model_dir, "--quantize", "int8", "--calibration-dataset", "digits-mosaic", "--calibration-split",
        "validation", "--calibration-samples", "64", "--dataset-options", json.dumps(options),
    ])  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = result.stdout
    quantized = model_dir / "onnx" / "model_quantized.onnx"
    graph = onnx.load(str(quantized)).graph
    num_quantized, num_convolutions = count_quantized_convolutions(quantized)
    assert num_convolutions >= 10 and num_quantized == num_convolutions  # every Conv reads dequantized int8
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)
    # the group-wise classifier stays float32: its weight read as stored, its outputs never re-quantized
    classifier = [node for node in graph.node if node.name.startswith("/model/classifier/")]
    outputs = {name for node in classifier for name in node.output}
    assert any("model.classifier.weight" in node.input for node in classifier)
    assert not any(node.op_type == "QuantizeLinear" and outputs & set(node.input) for node in graph.node)
    metadata = {entry.key: json.loads(entry.value) for entry in onnx.load(str(quantized)).metadata_props}
    assert metadata["id2label"] == {str(i): str(i) for i in range(10)}

    line = next(line for line in printed.splitlines() if "test mAP" in line)
    fp32_map = float(line.split("float32 ")[1].split(",")[0])
    int8_map = float(line.split("int8 ")[1].split(" ")[0])
    assert fp32_map > 30  # above the ~25 of an untrained model: the scores carry information to preserve
    assert abs(int8_map - fp32_map) <= 1.0
    assert float(line.split("tag agreement ")[1].split("%")[0]) >= 97.0
    card = (model_dir / "README.md").read_text()
    assert card.count("## ONNX Runtime") == 1 and f"{int8_map:.2f}" in card

    images = [row["image"] for row in load_multilabel_dataset("digits-mosaic", split="test", **options)][:32]
    eager = pipeline("multi-label-image-classification", model=str(model_dir), device="cpu")
    int8 = pipeline("multi-label-image-classification", model=str(model_dir), backend="onnx-int8")
    eager_tags = [{item["label"] for item in row} for row in eager(images)]
    int8_tags = [{item["label"] for item in row} for row in int8(images)]
    assert 0 < sum(map(len, eager_tags)) < 32 * 10  # some labels tagged, not all: the comparison is not vacuous
    # (image, label) decisions, the script's "tag agreement" through the pipelines: about 2 % of them sit near the
    # threshold and flip under int8 noise, so 4 of these 32 images' whole tag sets differ (in this and the old graph)
    differing = sum(len(a ^ b) for a, b in zip(eager_tags, int8_tags))
    assert differing <= 0.03 * 32 * 10


def test_onnx_session_uses_the_measured_settings(exported_model_dir):
    """All graph optimisations, sequential execution, intra-op threads that do not spin-wait (measured fastest,
    `scripts/benchmark.py serving --profile`), for the pipeline's ONNX backend too."""
    for session in (
        onnx_session(exported_model_dir / ONNX_FILE_NAME),
        SADCLOnnxModel.from_pretrained(exported_model_dir).session,
    ):
        options = session.get_session_options()
        assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert options.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_benchmark_tagging_reports_end_to_end_beside_its_limits(tiny_model_dir, tmp_path):
    """`benchmark.py tagging` on a few small JPEGs: every backend's end-to-end, model-only and decode-only images/s,
    the missing ONNX graphs exported first, each figure the best of its runs with the load average of each run, and
    the previous path (full decode, one image at a time) the end-to-end figures are compared with, and the web
    tagger's requests/s and latency percentiles per number of concurrent clients, with and without request batching."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    output = tmp_path / "tagging.json"
    arguments = [
        "tagging", "--model", model_dir, "--num-images", 4, "--photo-size", "320x240", "--batch-size", 2,
        "--num-workers", 1, "--repeats", 2, "--clients", 1, 2, "--cache-dir", tmp_path / "cache", "--output", output,
        "--unbatched-baseline", "--tagger-images", tmp_path / "cache", "--tagger-requests", 6,
    ]  # fmt: skip
    result = run_script("benchmark", arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert (model_dir / ONNX_FILE_NAME).is_file() and (model_dir / "onnx" / "model_quantized.onnx").is_file()
    images = sorted(Path(report["images"]).glob("*.jpg"))
    assert len(images) == report["num_images"] == 4 and Image.open(images[0]).size == (320, 240)
    decode = report["decode_only"]["workers_1"]
    assert set(report["decode_only"]) == {"workers_0", "workers_1"}
    assert len(decode["values"]) == len(decode["load_averages"]) == 2 and decode["best"] == max(decode["values"])
    assert set(report["backends"]) == {"pytorch", "onnx", "onnx-int8"}
    for row in report["backends"].values():
        assert row["limit_img_s"] == min(decode["best"], row["model_only"]["best"]) > 0
        end_to_end = row["end_to_end_workers_1"]["best"]
        assert 0 < end_to_end and row["end_to_end_vs_limit"] == pytest.approx(end_to_end / row["limit_img_s"])
        assert row["end_to_end_workers_0"]["best"] > 0
        previous = report["previous_path_pytorch"]["best"]
        assert previous > 0 and row["end_to_end_vs_previous_path"] == pytest.approx(end_to_end / previous)
    assert sorted(report["tagger_images"]) == [str(path) for path in images]  # --tagger-images: a folder of them
    assert set(report["tagger_load"]) == {"pytorch", "pytorch, max_batch_size 1"}
    for tagger in report["tagger_load"].values():  # the web tagger on loopback, 1 and 2 concurrent clients
        for clients in ("1", "2"):
            # at least 8 requests per client, 6 in all asked: 8 each
            assert len(tagger[clients]["runs"]) == 2 and tagger[clients]["requests"] == 8 * int(clients)
            assert 0 < tagger[clients]["p50_s"] <= tagger[clients]["p95_s"]
        assert tagger["speedup"] == pytest.approx(tagger["2"]["requests_per_s"] / tagger["1"]["requests_per_s"])
