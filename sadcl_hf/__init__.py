"""sadcl-hf: SADCL (Semantic-Aware Dual Contrastive Learning) multi-label image classification for the Hugging
Face ecosystem."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .analysis.calibration import calibrate_thresholds, load_thresholds
from .configuration_sadcl import COCO_LABELS, SADCL_PRESETS, SADCLConfig
from .losses import (
    AsymmetricLoss,
    PrototypeToSampleContrastiveLoss,
    SADCLLoss,
    SADCLLossOutput,
    SampleToSampleContrastiveLoss,
)
from .modeling_sadcl import (
    SADCLForImageClassification,
    SADCLImageClassifierOutput,
    SADCLModel,
    SADCLModelOutput,
    SADCLPreTrainedModel,
)
from .serving.pipeline import MULTI_LABEL_TASK, MultiLabelImageClassificationPipeline, register_pipeline

__version__ = "0.1.0"

AutoConfig.register("sadcl", SADCLConfig, exist_ok=True)
AutoModel.register(SADCLConfig, SADCLModel, exist_ok=True)
AutoModelForImageClassification.register(SADCLConfig, SADCLForImageClassification, exist_ok=True)
# A saved or pushed checkpoint carries this code and an `auto_map`, so it loads with `trust_remote_code=True`
# where sadcl-hf is not installed.
SADCLConfig.register_for_auto_class()
SADCLModel.register_for_auto_class("AutoModel")
SADCLForImageClassification.register_for_auto_class("AutoModelForImageClassification")
register_pipeline()  # pipeline("multi-label-image-classification", model=...)

_LAZY = {
    "SADCLTrainer": ".training.trainer",
    "SADCLTrainingArguments": ".training.arguments",
    "SADCLOnnxModel": ".serving.onnx_runtime",
}


def __getattr__(name: str):
    """`SADCLTrainer` and `SADCLTrainingArguments` import transformers' Trainer, and `SADCLOnnxModel` the ONNX
    Runtime backend, only when asked for."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AsymmetricLoss",
    "COCO_LABELS",
    "MULTI_LABEL_TASK",
    "MultiLabelImageClassificationPipeline",
    "SADCL_PRESETS",
    "SADCLConfig",
    "SADCLForImageClassification",
    "SADCLImageClassifierOutput",
    "SADCLLoss",
    "SADCLLossOutput",
    "SADCLModel",
    "SADCLModelOutput",
    "SADCLOnnxModel",
    "SADCLPreTrainedModel",
    "SADCLTrainer",
    "SADCLTrainingArguments",
    "PrototypeToSampleContrastiveLoss",
    "SampleToSampleContrastiveLoss",
    "calibrate_thresholds",
    "load_thresholds",
]
