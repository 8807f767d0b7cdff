"""ONNX export of SADCL classifiers: pixel_values [B, 3, S, S] -> logits [B, K], with a dynamic batch axis.

Uses PyTorch's TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`): the torch.export-based exporter
needs `onnxscript`, which sadcl-hf does not depend on. Needs the `[onnx]` extra (`onnx`, `onnxruntime`) for the
metadata and [`verify_onnx`]. The label names, thresholds and normalisation are stored as ONNX metadata
(`metadata_props`: `id2label`, `thresholds`, `image_size`, `image_mean`, `image_std`; JSON values).
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .image_processing import backbone_normalization

__all__ = ["export_onnx", "verify_onnx"]


class _LogitsOnly(nn.Module):
    """pixel_values -> logits, the exported graph's single output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, return_dict=True).logits


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{module} is needed for ONNX export; install sadcl-hf[onnx]") from error


def export_onnx(model, path: str | os.PathLike, image_size: int | None = None, opset: int = 17) -> Path:
    """Exports `model` (e.g. `SADCLForImageClassification`) to an ONNX file.

    Args:
        model: the classifier; exported in eval mode on the CPU in float32 (its own mode and device are restored).
        path: the `.onnx` file to write (parent folders are created).
        image_size: input side S (default `model.config.image_size`); the exported graph is fixed to S x S.
        opset: ONNX opset version.

    Returns:
        The path written. Input `pixel_values` [batch, 3, S, S] float32, output `logits` [batch, K].
    """
    onnx = _require("onnx")
    config = model.config
    image_size = image_size or config.image_size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    device, dtype, was_training = next(model.parameters()).device, next(model.parameters()).dtype, model.training
    wrapper = _LogitsOnly(model.to("cpu", torch.float32)).eval()
    example = torch.zeros(2, 3, image_size, image_size)
    try:
        with warnings.catch_warnings():
            # The legacy exporter is chosen on purpose (see the module docstring); its deprecation and tracer
            # warnings about Python-side shape arithmetic do not apply to a fixed input size.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["pixel_values"],
                output_names=["logits"],
                dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
                do_constant_folding=True,
            )
    finally:
        model.to(device, dtype).train(was_training)

    mean, std = backbone_normalization(config)
    exported = onnx.load(str(path))
    metadata = {
        "id2label": json.dumps({str(index): name for index, name in sorted(config.id2label.items())}),
        "thresholds": json.dumps(config.thresholds),
        "image_size": json.dumps(image_size),
        "image_mean": json.dumps(mean),
        "image_std": json.dumps(std),
    }
    for key, value in metadata.items():
        entry = exported.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(exported, str(path))
    return path


@torch.no_grad()
def verify_onnx(model, path: str | os.PathLike, batch_size: int = 3, atol: float = 1e-4, seed: int = 0) -> float:
    """Compares onnxruntime (CPU) with PyTorch on random inputs of `batch_size` images.

    Returns the largest absolute logit difference; raises `AssertionError` when it exceeds `atol`.
    """
    onnxruntime = _require("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    image_size = int(shape[-1])
    pixel_values = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters())
        inputs = pixel_values.to(parameter.device, parameter.dtype)
        expected = model(pixel_values=inputs).logits.float().cpu().numpy()
    finally:
        model.train(was_training)
    actual = session.run(["logits"], {"pixel_values": pixel_values.numpy()})[0]
    difference = float(np.abs(actual - expected).max())
    if not difference <= atol:
        raise AssertionError(f"ONNX logits differ from PyTorch by {difference:.3g} (> {atol:g}) for {path}")
    return difference
