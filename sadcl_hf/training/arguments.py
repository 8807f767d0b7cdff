"""The arguments of a training run, parsed together by `scripts/train.py`
(`sadcl_hf.training.recipe.build_argument_parser`): [`ModelArguments`] (stage, preset, model overrides),
[`DataArguments`] (dataset, splits, augmentation) and [`SADCLTrainingArguments`] (`transformers.TrainingArguments`
with the paper's defaults and SADCL's options)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from ..configuration_sadcl import SADCL_PRESETS
from ..data import DEFAULT_CROP_SCALES

__all__ = ["STAGES", "DataArguments", "ModelArguments", "SADCLTrainingArguments"]

STAGES = ("baseline", "sadcl", "single")


def _json_mapping(value: dict | str | None, name: str) -> dict | None:
    """A mapping given as a dict (from --config) or a JSON object string (from the command line)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"{name}: expected a JSON object, got {value!r} ({error})") from None
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{name}: expected a JSON object (mapping), got {value!r}")
    return value


@dataclass
class ModelArguments:
    """The model a run trains: the recipe stage, a new model's preset and overrides, or a saved model to continue."""

    _argument_group_name = "SADCL model"

    stage: str = field(
        default="single",
        metadata={
            "choices": STAGES,
            "help": "'baseline': SARL + ASL (stage 1); 'sadcl': full objective from a stage-1 model and its prototypes "
            "(stage 2); 'single': full objective from scratch with online prototypes.",
        },
    )
    preset: str = field(
        default="paper-r101-448",
        metadata={
            "choices": list(SADCL_PRESETS),
            "help": "SADCLConfig preset for a new model ('tiny': resnet10t at 64 px, fast on a CPU).",
        },
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from this sadcl-hf model folder or Hub id (stage 2: the stage-1 model)."}
    )
    backbone: str | None = field(default=None, metadata={"help": "Any timm model name (overrides the preset)."})
    use_pretrained_backbone: bool | None = field(
        default=None,
        metadata={"help": "Download the backbone's ImageNet weights from the Hub (default: the preset's)."},
    )
    image_size: int | None = field(default=None, metadata={"help": "Training and evaluation resolution."})
    sscl_mode: str | None = field(default=None, metadata={"help": "'reference' (paper) or 'corrected'."})
    config_overrides: dict | str | None = field(
        default=None, metadata={"help": "Other SADCLConfig fields: a JSON object (or a mapping in --config)."}
    )
    prototypes: str | None = field(
        default=None, metadata={"help": "Stage 'sadcl': prototypes file (.npy/.safetensors) instead of computing them."}
    )
    online_prototype_fraction: float = field(
        default=0.1, metadata={"help": "Stage 'single': fraction of the steps with online prototypes."}
    )
    channels_last: bool = field(
        default=False,
        metadata={"help": "Backbone convolutions in channels-last memory format (faster on GPUs, with bf16/fp16)."},
    )

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"--stage must be one of {STAGES}, got {self.stage!r}")
        self.config_overrides = _json_mapping(self.config_overrides, "--config_overrides")


@dataclass
class DataArguments:
    """The dataset a run trains and evaluates on (`sadcl_hf.data` registry), its splits and the training
    augmentation."""

    _argument_group_name = "data"

    dataset: str = field(default="digits-mosaic", metadata={"help": "Dataset name (sadcl_hf.data.DATASET_NAMES)."})
    dataset_root: str | None = field(default=None, metadata={"help": "The dataset's folder as distributed."})
    train_split: str | None = field(default=None, metadata={"help": "Training split (default: the benchmark's)."})
    eval_split: str | None = field(default=None, metadata={"help": "Evaluation split (default: the benchmark's)."})
    dataset_options: dict | str | None = field(
        default=None, metadata={"help": "Extra loader options: a JSON object (or a mapping in --config)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation images."})
    resize_margin: int = field(default=64, metadata={"help": "Training resize is image_size + margin before cropping."})
    crop_scales: list[float] = field(
        default_factory=lambda: list(DEFAULT_CROP_SCALES),
        metadata={"help": "Multi-scale crop scales (the paper's 1.0 0.875 0.75 0.66 0.5); 1.0 alone disables it."},
    )
    max_unreadable_fraction: float = field(
        default=0.01,
        metadata={
            "help": "Unreadable training images (corrupt, truncated, not an image) are skipped with a warning naming "
            "each file once, listed in OUTPUT_DIR/unreadable_images.txt and counted in the final metrics "
            "(train_unreadable_images); one never stops training, but more than this fraction of the images seen "
            "stops it with an error. 0: stop at the first one."
        },
    )
    hflip: bool = field(default=True, metadata={"help": "Random horizontal flips."})
    randaugment: bool = field(default=False, metadata={"help": "RandAugment in training."})
    cutout: bool = field(default=False, metadata={"help": "Cutout (random erasing) in training."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the splits (datasets IterableDataset, shard by shard) from --dataset_root: a folder of "
            "parquet or WebDataset shards (<root>/<split>/*.parquet or *.tar) or a Hub dataset id; needs "
            "--max_steps. Each process reads its own shards."
        },
    )

    def __post_init__(self):
        self.dataset_options = _json_mapping(self.dataset_options, "--dataset_options")


@dataclass
class SADCLTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's defaults (AdamW, lr 5e-5, weight decay 5e-3, one-cycle) and SADCL options.

    The memory bank is per process (as in the paper), so buffers are not broadcast between DDP ranks.
    """

    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate (paper: 5e-5 at batch 64)."})
    weight_decay: float = field(default=5e-3, metadata={"help": "AdamW weight decay (paper: 5e-3 on COCO)."})
    lr_schedule: str = field(
        default="one_cycle",
        metadata={"help": "'one_cycle' (torch OneCycleLR, the paper's) or 'trainer' (use --lr_scheduler_type)."},
    )
    one_cycle_pct_start: float = field(default=0.2, metadata={"help": "Warm-up fraction of the one-cycle schedule."})
    backbone_learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate of the backbone (default: --learning_rate)."}
    )
    use_ema: bool = field(default=True, metadata={"help": "Keep an EMA of the weights; evaluate and export it."})
    ema_decay: float = field(default=0.9998, metadata={"help": "EMA decay (paper: 0.9998)."})
    ema_warmup: bool = field(
        default=False, metadata={"help": "Ramp the EMA decay up from 0 (timm ModelEmaV3 warm-up); for short runs."}
    )
    online_prototype_steps: int = field(
        default=0,
        metadata={
            "help": "Stage 'single': for this many first steps the prototypes are the running means of confident "
            "positive label features (no stage-1 model needed); 0 disables."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop after this many evaluations without improvement of --metric_for_best_model "
            "(e.g. eval_ema_map); needs --load_best_model_at_end."
        },
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "The collator needs the image column."})
    ddp_broadcast_buffers: bool | None = field(default=False, metadata={"help": "Memory banks stay per process."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every trainable parameter takes part in the objective."}
    )
    label_names: list[str] | None = field(default_factory=lambda: ["labels"], metadata={"help": "Label keys."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Delete the checkpoints a previous run left in --output_dir and start afresh (without it, a new "
            "run refuses an --output_dir holding checkpoints unless it resumes)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.dataloader_pin_memory and not torch.accelerator.is_available():
            self.dataloader_pin_memory = False  # nothing to pin for; torch would warn about it for every DataLoader
        if self.lr_schedule not in ("one_cycle", "trainer"):
            raise ValueError(f"lr_schedule must be 'one_cycle' or 'trainer', got {self.lr_schedule!r}")
        if self.early_stopping_patience is not None and not (
            self.load_best_model_at_end and self.metric_for_best_model
        ):
            raise ValueError("early_stopping_patience needs load_best_model_at_end and metric_for_best_model")
