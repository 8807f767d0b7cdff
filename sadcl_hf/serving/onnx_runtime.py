"""Serving a SADCL model with ONNX Runtime: [`SADCLOnnxModel`], a drop-in model for the tagging pipeline.

optimum's ONNX Runtime integration (`optimum-onnx`, `ORTModelForImageClassification`) is the library made for this,
but its only release (0.1.0) requires `transformers<4.58` while sadcl-hf is built on transformers 5, and its exporter
only knows transformers' own architectures (a custom model needs a hand-written `OnnxConfig`). sadcl-hf therefore
uses onnxruntime directly, with optimum's file layout (`onnx/model.onnx`, `onnx/model_quantized.onnx` in the model
folder) and optimum's interface (`from_pretrained`, a call that returns `logits`)::

    import sadcl_hf
    from transformers import pipeline

    tagger = pipeline("multi-label-image-classification", model="runs/demo/model", backend="onnx")
    tagger = pipeline("multi-label-image-classification", model=SADCLOnnxModel.from_pretrained("runs/demo/model"),
                      image_processor="runs/demo/model")   # the same, without loading the PyTorch weights
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig
from transformers.modeling_outputs import ImageClassifierOutput

from .onnx_export import ONNX_FILE_NAME, ONNX_INT8_FILE_NAME, onnx_session

__all__ = ["SADCLOnnxModel"]


class SADCLOnnxModel:
    """An exported SADCL classifier run by an onnxruntime `InferenceSession`: `model(pixel_values=[B, 3, S, S])`
    returns `ImageClassifierOutput(logits=[B, K])` (torch tensors), with the model folder's `config`, so
    `MultiLabelImageClassificationPipeline` and `ImageClassificationPipeline` accept it as their model.

    Args:
        path: the `.onnx` file.
        config: the model's `SADCLConfig` (labels, thresholds).
        providers: onnxruntime execution providers (default: CPU).
        num_threads: intra-op threads (default: onnxruntime's, one per physical core).
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, path: str | os.PathLike, config, providers: list[str] | None = None, num_threads=None):
        self.path = Path(path)
        self.config = config
        self.name_or_path = getattr(config, "_name_or_path", str(path))
        self.session = onnx_session(path, num_threads, providers)
        expected = self.session.get_inputs()[0].shape[1:]
        image_size = getattr(config, "image_size", None)
        if image_size is not None and list(expected) != [3, image_size, image_size]:
            raise ValueError(
                f"{path}: the ONNX graph expects pixel_values [batch, {', '.join(map(str, expected))}] but the "
                f"model config has image_size={image_size}; re-export it (scripts/export_onnx.py)"
            )

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike,
        file_name: str = ONNX_FILE_NAME,
        revision: str | None = None,
        providers: list[str] | None = None,
        num_threads: int | None = None,
    ) -> SADCLOnnxModel:
        """Loads `file_name` (default `onnx/model.onnx`; `onnx/model_quantized.onnx` for int8) and the config from a
        model folder or a Hub repository."""
        folder = Path(model_name_or_path)
        if folder.is_dir():
            path = folder / file_name
            if not path.is_file():
                raise FileNotFoundError(
                    f"{model_name_or_path} has no {file_name}; export it with "
                    f"`python scripts/export_onnx.py {model_name_or_path}`"
                    + (" --quantize int8" if file_name == ONNX_INT8_FILE_NAME else "")
                )
        else:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(str(model_name_or_path), file_name, revision=revision)
        config = AutoConfig.from_pretrained(model_name_or_path, revision=revision)
        return cls(path, config, providers=providers, num_threads=num_threads)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # inputs and outputs are host tensors whatever the execution provider

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def to(self, device) -> SADCLOnnxModel:
        """Only the CPU: choose the accelerator with `providers=` (e.g. `["CUDAExecutionProvider"]`)."""
        if torch.device(device).type != "cpu":
            raise ValueError(
                f"SADCLOnnxModel runs through onnxruntime; pass device='cpu' to the pipeline and choose the "
                f"accelerator with SADCLOnnxModel.from_pretrained(..., providers=[...]) (got device={device!r})"
            )
        return self

    def eval(self) -> SADCLOnnxModel:
        return self

    def can_generate(self) -> bool:
        return False

    def __call__(self, pixel_values: torch.Tensor | np.ndarray, **kwargs) -> ImageClassifierOutput:
        """pixel_values [B, 3, S, S] -> `ImageClassifierOutput(logits=[B, K])`."""
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.detach().cpu().float().numpy()
        logits = self.session.run(["logits"], {"pixel_values": np.ascontiguousarray(pixel_values, np.float32)})[0]
        return ImageClassifierOutput(logits=torch.from_numpy(logits))

    forward = __call__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, providers={self.session.get_providers()})"
