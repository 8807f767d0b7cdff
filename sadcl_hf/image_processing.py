"""The image processor saved with every SADCL model: resize to `image_size`, rescale, normalise as the backbone
expects. It is the one evaluation preprocessing: training-time evaluation, prototypes and calibration batch images
through it ([`eval_collator_for_config`]), `predict` and the pipeline load it from the model folder."""

from __future__ import annotations

import datasets
import timm
import torch
from transformers import ViTImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from .configuration_sadcl import SADCLConfig
from .data import ImageProcessorTransform, MultiLabelCollator
from .data.images import processor_draft_size

__all__ = [
    "backbone_normalization",
    "processor_draft_size",
    "encoded_images",
    "eval_collator_for_config",
    "evaluation_dataloader",
    "image_processor_for_config",
]


def backbone_normalization(config: SADCLConfig) -> tuple[list[float], list[float]]:
    """(mean, std): the config's own, else the timm backbone's `pretrained_cfg`, else ImageNet's (transformers
    backbones)."""
    mean, std = config.image_mean, config.image_std
    if mean is None or std is None:
        pretrained_cfg = timm.get_pretrained_cfg(config.backbone) if config.use_timm_backbone else None
        mean = mean or list(getattr(pretrained_cfg, "mean", None) or IMAGENET_DEFAULT_MEAN)
        std = std or list(getattr(pretrained_cfg, "std", None) or IMAGENET_DEFAULT_STD)
    return [float(v) for v in mean], [float(v) for v in std]


def image_processor_for_config(config: SADCLConfig) -> ViTImageProcessor:
    """The evaluation preprocessing of the paper (bilinear resize to a square `image_size`, ToTensor, Normalize)
    as a transformers image processor, so `AutoImageProcessor` and `pipeline(...)` need no custom code."""
    mean, std = backbone_normalization(config)
    return ViTImageProcessor(
        do_resize=True,
        size={"height": config.image_size, "width": config.image_size},
        resample=PILImageResampling.BILINEAR,
        do_rescale=True,
        do_normalize=True,
        image_mean=mean,
        image_std=std,
    )


def eval_collator_for_config(
    config: SADCLConfig, image_processor=None, max_unreadable_fraction: float = 0.0, unreadable_list=None
) -> MultiLabelCollator:
    """Evaluation batches `{"pixel_values" [B, 3, H, W], "labels" [B, K]}` preprocessed by `image_processor`
    (default: [`image_processor_for_config`]`(config)`, the processor saved with the model), image by image as the
    pipeline does: encoded JPEGs decoded at the processor's size ([`processor_draft_size`]). With
    `max_unreadable_fraction > 0` an unreadable image is dropped from its batch with its label row (warned about and
    listed in `unreadable_list` as in training, see [`MultiLabelCollator`]), so metrics cover the readable images."""
    processor = image_processor if image_processor is not None else image_processor_for_config(config)
    return MultiLabelCollator(
        config.num_labels,
        ImageProcessorTransform(processor),
        max_unreadable_fraction=max_unreadable_fraction,
        unreadable_list=unreadable_list,
        draft_size=processor_draft_size(processor),
        drop_unreadable=True,
    )


def encoded_images(dataset, image_column: str = "image"):
    """`dataset` with its `datasets.Image` column left encoded (`decode=False`), so the collator decodes each image
    as the pipeline does (JPEG draft size, unreadable files skipped); other datasets unchanged."""
    image_feature = getattr(dataset, "features", None) or {}
    image_feature = image_feature.get(image_column)
    if isinstance(image_feature, datasets.Image) and image_feature.decode:
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def evaluation_dataloader(
    config: SADCLConfig,
    dataset,
    batch_size: int = 32,
    num_workers: int = 0,
    image_processor=None,
    max_unreadable_fraction: float = 0.0,
    unreadable_list=None,
) -> torch.utils.data.DataLoader:
    """A multi-label dataset (`image`, `labels` columns) in evaluation batches, in order, through
    [`eval_collator_for_config`]: what calibration, prototypes, the label-feature analysis and the ONNX checks
    score. Images stored by `datasets` reach the collator encoded, so JPEGs decode at the processor's size exactly as
    in the pipeline; unreadable ones are dropped as [`eval_collator_for_config`] says."""
    collator = eval_collator_for_config(config, image_processor, max_unreadable_fraction, unreadable_list)
    dataset = encoded_images(dataset, collator.image_column)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collator)
