"""ONNX export of SADCL classifiers: pixel_values [B, 3, S, S] -> logits [B, K], with a dynamic batch axis, and
static int8 quantization calibrated on real images.

Uses PyTorch's TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`): the torch.export-based exporter
needs `onnxscript`, which sadcl-hf does not depend on. Needs the `[onnx]` extra (`onnx`, `onnxruntime`) for the
metadata and [`verify_onnx`]. The label names, thresholds and normalisation are stored as ONNX metadata
(`metadata_props`: `id2label`, `thresholds`, `image_size`, `image_mean`, `image_std`; JSON values).

Files live beside the model, as optimum lays them out, so a pushed model folder carries them:
`onnx/model.onnx` (float32, [`ONNX_FILE_NAME`]) and `onnx/model_quantized.onnx` (static int8, QDQ,
[`ONNX_INT8_FILE_NAME`]). [`sadcl_hf.serving.onnx_runtime.SADCLOnnxModel`] serves either.

The functions here take files and arrays; the images that calibrate and score a graph come from the caller
(`scripts/export_onnx.py` loads them through [`sadcl_hf.image_processing.evaluation_dataloader`]).
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..evaluation import DEFAULT_THRESHOLD
from ..image_processing import backbone_normalization

__all__ = [
    "ONNX_FILE_NAME",
    "ONNX_INT8_FILE_NAME",
    "compare_onnx_models",
    "count_quantized_convolutions",
    "export_onnx",
    "onnx_logits",
    "onnx_session",
    "quantize_onnx_int8",
    "verify_onnx",
]

ONNX_FILE_NAME = "onnx/model.onnx"
ONNX_INT8_FILE_NAME = "onnx/model_quantized.onnx"


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
    session = onnx_session(path)
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


def onnx_session(path: str | os.PathLike, num_threads: int | None = None, providers: list[str] | None = None):
    """An onnxruntime `InferenceSession` for `path` with the settings measured fastest on SADCL graphs (default: CPU
    provider, one intra-op thread per physical core, onnxruntime's own count).

    Measured on the demo-sized model (tiny preset, 64 px, batch 64, 2 cores, load average about 3;
    `scripts/benchmark.py serving --profile`, README "Performance"): all graph optimisations (`ORT_ENABLE_ALL`,
    which lays the Convs out in the blocked NCHWc format and fuses Conv+BatchNorm+ReLU) are 1.35x
    `ORT_ENABLE_EXTENDED` and 1.4x `ORT_ENABLE_BASIC`; sequential execution is 2.1x parallel execution with 2
    inter-op threads; one intra-op thread per physical core is 1.9x one thread; onnxruntime's transformer optimizer
    (`onnxruntime.transformers.optimizer`) fuses only the LayerNorms (no attention pattern of this decoder matches)
    and changes nothing measurable, so it is not applied. The intra-op threads do not spin-wait between operators:
    the same speed on an idle machine (-1 %), 1.2x (batch 64) and 1.8x (batch 1) when other processes share the
    cores (load average 9-13), as `predict.py`'s DataLoader workers do. Convolutions take 89-90 % of the time.
    """
    onnxruntime = _require("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if num_threads:
        options.intra_op_num_threads = num_threads
    return onnxruntime.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def onnx_logits(path: str | os.PathLike, batches: Iterable[np.ndarray], num_threads: int | None = None) -> np.ndarray:
    """Logits [N, K] of an ONNX classifier (CPU) over `batches` of pixel_values [B, 3, S, S] float32."""
    session = onnx_session(path, num_threads)
    outputs = [
        session.run(["logits"], {"pixel_values": np.ascontiguousarray(batch, np.float32)})[0] for batch in batches
    ]
    return np.concatenate(outputs)


def _is_classifier(node) -> bool:
    """Whether an exported graph's node belongs to the group-wise classifier (`model.classifier`: Mul, ReduceSum,
    Add over [B, K, D] label features -> logits [B, K])."""
    return node.name.startswith("/model/classifier/")  # [`_LogitsOnly`]'s `model`, then the classifier


def quantize_onnx_int8(
    path: str | os.PathLike,
    output: str | os.PathLike,
    calibration_batches: Iterable[np.ndarray],
    per_channel: bool = True,
) -> Path:
    """Static int8 quantization of an exported model with onnxruntime (`quantize_static`, QDQ format).

    Activations are uint8 with ranges calibrated (min-max) on `calibration_batches` (pixel_values [B, 3, S, S]
    float32 from real images, e.g. a validation split); weights are int8, per output channel when `per_channel`.
    Every operator onnxruntime can quantize is (Conv, MatMul and Gemm of the backbone and the transformer, and the
    Adds, pools and activations between them, so activations stay int8 from one Conv to the next): QuantizeLinear /
    DequantizeLinear pairs around them, fused by onnxruntime into integer kernels. On the demo model this is 2.0x
    faster than quantizing only Conv/MatMul/Gemm's inputs (1.6x) for a -0.05 point mAP change. The model is first
    pre-processed (`quant_pre_process`: shape inference and graph optimisation, which folds the BatchNorms into the
    Convs). The group-wise classifier (an elementwise Mul and ReduceSum, a negligible share of the time) stays in
    float32: quantized, it cost 1.84 mAP points on the int8 test's probe model (`tests/test_onnx.py`), kept float
    0.25. The metadata of `path` (labels, thresholds, normalisation) is copied.

    Returns:
        The path written.
    """
    onnx = _require("onnx")
    _require("onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class PixelValuesReader(CalibrationDataReader):
        def __init__(self, batches: Iterable[np.ndarray]):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"pixel_values": np.ascontiguousarray(batch, np.float32)}

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(output),
            PixelValuesReader(calibration_batches),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # onnxruntime looks for LayerNormalization's 1-D scale's channels on axis 1 (BatchNorm's input layout),
            # warns "Axis 1 is out-of-range" once per LayerNorm and falls back to per-tensor: axis 0 is its channel.
            extra_options={"QDQOpTypePerChannelSupportToAxis": {"LayerNormalization": 0}},
            nodes_to_exclude=[node.name for node in onnx.load(str(prepared)).graph.node if _is_classifier(node)],
        )
    quantized = onnx.load(str(output))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(onnx.load(str(path), load_external_data=False).metadata_props)
    onnx.save(quantized, str(output))
    return output


def count_quantized_convolutions(path: str | os.PathLike) -> tuple[int, int]:
    """(Convs whose input and weight both come from a DequantizeLinear, all Convs) of an ONNX graph."""
    onnx = _require("onnx")
    graph = onnx.load(str(path)).graph
    producers = {output: node.op_type for node in graph.node for output in node.output}
    convolutions = [node for node in graph.node if node.op_type == "Conv"]
    quantized = [
        node for node in convolutions if all(producers.get(name) == "DequantizeLinear" for name in node.input[:2])
    ]
    return len(quantized), len(convolutions)


def compare_onnx_models(
    reference: str | os.PathLike,
    candidate: str | os.PathLike,
    batches: list[dict[str, Any]],
    thresholds: np.ndarray | float = DEFAULT_THRESHOLD,
) -> dict[str, float]:
    """mAP (percent) of two ONNX classifiers on the same evaluation `batches` (`pixel_values` [B, 3, S, S] and
    multi-hot `labels` [B, K], as [`sadcl_hf.image_processing.evaluation_dataloader`] yields them), the change
    (`map_change`, candidate - reference, points), the largest probability difference and the share of
    (image, class) tag decisions they agree on at `thresholds` ([K] or one number)."""
    from ..evaluation import mean_average_precision, predict_labels, sigmoid

    pixel_values = [np.asarray(batch["pixel_values"], np.float32) for batch in batches]
    targets = np.concatenate([np.asarray(batch["labels"]) for batch in batches])
    logits = [onnx_logits(path, pixel_values) for path in (reference, candidate)]
    probabilities = [sigmoid(value.astype(np.float64)) for value in logits]
    reference_map, candidate_map = (mean_average_precision(value, targets) for value in probabilities)
    tags = [predict_labels(value, thresholds) for value in probabilities]
    return {
        "reference_map": reference_map,
        "candidate_map": candidate_map,
        "map_change": candidate_map - reference_map,
        "max_probability_difference": float(np.abs(probabilities[1] - probabilities[0]).max()),
        "tag_agreement": float((tags[0] == tags[1]).mean()),
    }
