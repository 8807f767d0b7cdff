"""ONNX export: onnxruntime matches PyTorch, dynamic batch axis, metadata."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from transformers import AutoModelForImageClassification

from sadcl_hf.onnx_export import export_onnx, verify_onnx

from .conftest import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_export_script_matches_pytorch_for_any_batch_size(tiny_model_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("export_script", ROOT / "scripts" / "export_onnx.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    output = tmp_path / "onnx" / "model.onnx"
    assert script.main([str(tiny_model_dir), str(output), "--opset", "17"]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out

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
