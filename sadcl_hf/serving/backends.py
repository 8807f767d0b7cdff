"""Serving backends, one table: [`BACKENDS`] maps a backend name to the loader of its model. The pipeline's
`backend=` and [`sadcl_hf.serving.pipeline.load_pipeline`] (used by `scripts/predict.py`, the web tagger and
`scripts/benchmark.py`) load through it::

    from sadcl_hf.serving.pipeline import load_pipeline

    tagger = load_pipeline("runs/demo/model", backend="onnx-int8")   # the PyTorch weights are not loaded

To add a backend, add its loader `(model_name_or_path, revision=None) -> model` to [`BACKENDS`].
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from transformers import AutoModelForImageClassification

from .onnx_export import ONNX_FILE_NAME, ONNX_INT8_FILE_NAME
from .onnx_runtime import SADCLOnnxModel

__all__ = ["BACKENDS", "ONNX_BACKENDS", "load_backend_model"]

# ONNX backends and the file of the model folder each one serves.
ONNX_BACKENDS = {"onnx": ONNX_FILE_NAME, "onnx-int8": ONNX_INT8_FILE_NAME}

# Backend name -> loader(model_name_or_path, revision=None, **from_pretrained_kwargs) -> model.
BACKENDS: dict[str, Callable[..., Any]] = {
    "pytorch": AutoModelForImageClassification.from_pretrained,
    **{name: partial(SADCLOnnxModel.from_pretrained, file_name=file) for name, file in ONNX_BACKENDS.items()},
}


def load_backend_model(model_name_or_path: str, backend: str = "pytorch", revision: str | None = None, **kwargs):
    """The model of `backend` ([`BACKENDS`]) from a model folder or Hub id; `kwargs` (e.g. `dtype`) go to the
    PyTorch loader only."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
    if backend != "pytorch":
        return BACKENDS[backend](model_name_or_path, revision=revision)
    return BACKENDS[backend](model_name_or_path, revision=revision, **kwargs)
