"""sadcl-hf: SADCL (Semantic-Aware Dual Contrastive Learning) multi-label image classification for the Hugging Face ecosystem."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_sadcl import COCO_LABELS, SADCL_PRESETS, SADCLConfig
from .modeling_sadcl import (
    SADCLForImageClassification,
    SADCLImageClassifierOutput,
    SADCLModel,
    SADCLModelOutput,
    SADCLPreTrainedModel,
)
from .calibration import calibrate_thresholds, load_thresholds
from .pipeline import MULTI_LABEL_TASK, MultiLabelImageClassificationPipeline, register_pipeline

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

__all__ = [
    "COCO_LABELS",
    "MULTI_LABEL_TASK",
    "MultiLabelImageClassificationPipeline",
    "SADCL_PRESETS",
    "SADCLConfig",
    "SADCLForImageClassification",
    "SADCLImageClassifierOutput",
    "SADCLModel",
    "SADCLModelOutput",
    "SADCLPreTrainedModel",
    "calibrate_thresholds",
    "load_thresholds",
]
