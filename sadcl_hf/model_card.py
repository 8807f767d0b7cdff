"""Model cards (the repository `README.md`) for SADCL checkpoints.

[`create_model_card`] fills the Jinja template `sadcl_hf/templates/model_card.md` (the single source of the card's
layout, shipped as package data) through `huggingface_hub.ModelCard.from_template`: the YAML header carries the Hub
metadata (library, pipeline tag, base model, datasets, tags and the evaluation results as a `model-index`), the
body the architecture, labels, metrics, usage, training recipe, framework versions and the paper's citation.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .data.loading import dataset_info
from .evaluation import METRIC_TITLES, metric_title, split_metric_name
from .evaluation import MULTI_LABEL_TASK

__all__ = [
    "MODEL_CARD_TEMPLATE_PATH",
    "add_onnx_results_to_model_card",
    "create_model_card",
    "record_training_summary",
    "save_model_card",
]

MODEL_CARD_TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "model_card.md"

_METRIC_PREFIXES = ("eval_", "test_", "validation_", "val_")
_TRAINING_ARGUMENT_KEYS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "optim",
    "weight_decay",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "max_grad_norm",
    "bf16",
    "fp16",
    "seed",
)
# Values meaning "not used", left out of the card.
_UNUSED_TRAINING_ARGUMENTS = {
    ("max_steps", -1), ("warmup_ratio", 0), ("warmup_steps", 0), ("bf16", False), ("fp16", False)
}
_FRAMEWORKS = ("sadcl-hf", "transformers", "torch", "timm", "huggingface_hub", "datasets")
_SSCL_MODES = {
    "reference": "as in the released code, which produced the paper's numbers",
    "corrected": "as the paper's equation states",
}


def _dataset_display_name(dataset_name: str) -> str:
    """The dataset registry's display name; other names (a Hub dataset id) as they are."""
    try:
        return dataset_info(dataset_name).display_name
    except ValueError:
        return dataset_name


def _normalise_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """{"map": 84.1, "cf1_top3": ...}: known metric keys (Trainer prefixes like `eval_` removed), in percent."""
    normalised = {}
    for key, value in metrics.items():
        name = key.lower()
        for prefix in _METRIC_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        if split_metric_name(name) is None or isinstance(value, bool):
            continue
        try:
            normalised[name] = float(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"metric {key!r} must be a number, got {value!r}") from error
    order = list(METRIC_TITLES)

    def report_position(name: str) -> tuple[int, int]:
        base, top_k = split_metric_name(name)
        return order.index(base), top_k or 0

    return dict(sorted(normalised.items(), key=lambda item: report_position(item[0])))


def _training_hyperparameters(training_args: Any) -> list[tuple[str, str]]:
    if training_args is None:
        return []
    if hasattr(training_args, "to_dict") and not isinstance(training_args, Mapping):
        values = training_args.to_dict()
        values = {
            key: values[key]
            for key in _TRAINING_ARGUMENT_KEYS
            if values.get(key) is not None and (key, values[key]) not in _UNUSED_TRAINING_ARGUMENTS
        }
    elif isinstance(training_args, Mapping):
        values = {key: value for key, value in training_args.items() if value is not None}
    else:
        raise TypeError(f"training_args must be a dict or transformers.TrainingArguments, got {type(training_args)}")
    return [(str(key), f"{value:g}" if isinstance(value, float) else str(value)) for key, value in values.items()]


def _framework_versions() -> list[tuple[str, str]]:
    versions = []
    for name in _FRAMEWORKS:
        try:
            versions.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _format_parameter_count(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.1f}K"


def _default_model_id(config, dataset_name: str | None) -> str:
    parts = ["sadcl", config.backbone.split(".")[0], dataset_name]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(part for part in parts if part))


_SUMMARY_KEYS = ("dataset_name", "dataset_id", "train_split", "eval_split", "stage", "metrics", "hyperparameters")


def record_training_summary(
    model_or_config,
    metrics: Mapping[str, Any] | None,
    dataset_name: str,
    *,
    training_args: Mapping[str, Any] | Any | None = None,
    stage: str | None = None,
    train_split: str | None = None,
    eval_split: str | None = None,
    dataset_id: str | None = None,
) -> dict[str, Any]:
    """Records what a training run produced in `config.training_summary` (saved with config.json), so that every
    card made from the model later ([`create_model_card`], `model.push_to_hub`, `SADCLTrainer.push_to_hub`,
    `scripts/push_to_hub.py`) shows it, the metrics as the `model-index`.

    The arguments are [`create_model_card`]'s; `metrics` are those of the weights being saved. Returns the summary.
    """
    if not dataset_name:
        raise ValueError("record_training_summary needs dataset_name, the dataset the metrics were measured on")
    config = getattr(model_or_config, "config", model_or_config)
    summary = {
        "dataset_name": dataset_name,
        "dataset_id": dataset_id,
        "train_split": train_split,
        "eval_split": eval_split,
        "stage": stage,
        "metrics": _normalise_metrics(metrics or {}),
        "hyperparameters": dict(_training_hyperparameters(training_args)),
    }
    config.training_summary = {key: value for key, value in summary.items() if value not in (None, {})}
    return config.training_summary


def _recorded_summary(config) -> dict[str, Any]:
    summary = getattr(config, "training_summary", None) or {}
    if not isinstance(summary, Mapping) or set(summary) - set(_SUMMARY_KEYS):
        raise ValueError(
            f"config.training_summary must be a mapping with keys among {_SUMMARY_KEYS}, got {summary!r} "
            "(written by sadcl_hf.model_card.record_training_summary)"
        )
    return dict(summary)


def create_model_card(
    model_or_config,
    metrics: Mapping[str, Any] | None = None,
    dataset_name: str | None = None,
    training_args: Mapping[str, Any] | Any | None = None,
    stage: str | None = None,
    *,
    model_id: str | None = None,
    dataset_id: str | None = None,
    eval_split: str | None = None,
    train_split: str | None = None,
    license: str = "apache-2.0",
    tags: list[str] | None = None,
) -> ModelCard:
    """Builds the model card of a SADCL checkpoint.

    Every argument from `metrics` to `train_split` left out is taken from what the model recorded
    (`config.training_summary`, see [`record_training_summary`]).

    Args:
        model_or_config: a `SADCLForImageClassification` (adds the parameter count) or its `SADCLConfig`.
        metrics: evaluation results in percent as [`multilabel_metrics`] returns them (`map`, `cp`, ..., `of1_top3`;
            Trainer prefixes such as `eval_` are removed, other keys ignored). They go into the `model-index`.
        dataset_name: the dataset trained and evaluated on (e.g. `"coco2014"`); required with `metrics`.
        training_args: hyper-parameters, a dict (all entries shown) or `transformers.TrainingArguments` (the usual
            ones shown).
        stage: the training-recipe stage that produced the checkpoint (e.g. `"sadcl"`, `"finetune-448"`).
        model_id: the Hub repository id used in the title and usage snippets (default `sadcl-<backbone>-<dataset>`).
        dataset_id: the dataset's Hub id for the metadata (default `dataset_name`).
        eval_split / train_split: split names shown with the results and the training data.
        license: SPDX license identifier of the weights.
        tags: extra Hub tags.

    Returns:
        `huggingface_hub.ModelCard`; `card.save(path)` writes it, `ModelCard.load(path)` reads it back.
    """
    config = getattr(model_or_config, "config", model_or_config)
    label_names = config.label_names
    recorded = _recorded_summary(config)
    metrics = _normalise_metrics(recorded.get("metrics", {}) if metrics is None else metrics)
    dataset_name = dataset_name or recorded.get("dataset_name")
    dataset_id = dataset_id or recorded.get("dataset_id")
    stage = stage or recorded.get("stage")
    eval_split = eval_split or recorded.get("eval_split")
    train_split = train_split or recorded.get("train_split")
    if training_args is None:
        hyperparameters = list(recorded.get("hyperparameters", {}).items())
    else:
        hyperparameters = _training_hyperparameters(training_args)
    if metrics and not dataset_name:
        raise ValueError("metrics were given without dataset_name; the model-index needs the evaluation dataset")
    model_id = model_id or _default_model_id(config, dataset_name)
    dataset_id = dataset_id or dataset_name
    dataset_display = _dataset_display_name(dataset_name) if dataset_name else None

    pretrained_cfg = timm.get_pretrained_cfg(config.backbone)
    backbone_hub_id = getattr(pretrained_cfg, "hf_hub_id", None) if pretrained_cfg is not None else None
    base_model = backbone_hub_id if config.use_pretrained_backbone and backbone_hub_id else None

    eval_results = [
        EvalResult(
            task_type="image-classification",
            task_name="Multi-label image classification",
            dataset_type=dataset_id,
            dataset_name=dataset_display,
            dataset_split=eval_split,
            metric_type=name,
            metric_name=metric_title(name),
            metric_value=round(value, 2),
        )
        for name, value in metrics.items()
    ]
    card_data = ModelCardData(
        model_name=model_id,
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        metrics=["map", "f1", "precision", "recall"] if metrics else None,
        tags=["sadcl", MULTI_LABEL_TASK, "contrastive-learning", "query2label", "timm", *(tags or [])],
        eval_results=eval_results or None,
    )

    if config.objective == "sadcl":
        objective = f"ASL + {config.sscl_weight:g} x SSCL + {config.pscl_weight:g} x PSCL (eq. 12)"
    else:
        objective = "ASL only (the SARL baseline, no contrastive terms)"
    num_parameters = None
    if hasattr(model_or_config, "parameters"):
        num_parameters = _format_parameter_count(sum(p.numel() for p in model_or_config.parameters()))
    eval_description = f"Results on {dataset_display}" + (f" (`{eval_split}` split)" if eval_split else "") + (
        ", with the per-class thresholds stored in the config." if config.thresholds else ", at threshold 0.5."
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(MODEL_CARD_TEMPLATE_PATH),
        model_id=model_id,
        summary=(
            f"A SADCL multi-label image classifier for {len(label_names)} classes"
            + (f", trained on {dataset_display}" if dataset_display else "")
            + f", with a `{config.backbone}` backbone."
        ),
        backbone=config.backbone,
        backbone_library="timm" if config.use_timm_backbone else "transformers",
        backbone_url=f"https://huggingface.co/{backbone_hub_id}" if backbone_hub_id else None,
        pretrained_backbone=config.use_pretrained_backbone,
        image_size=config.image_size,
        hidden_dim=config.hidden_dim,
        num_encoder_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers,
        num_attention_heads=config.num_attention_heads,
        dim_feedforward=config.dim_feedforward,
        num_labels=len(label_names),
        num_parameters=num_parameters,
        label_names=label_names,
        objective=config.objective,
        objective_description=objective,
        sscl_mode=config.sscl_mode,
        sscl_mode_description=_SSCL_MODES.get(config.sscl_mode, config.sscl_mode),
        sscl_temperature=config.sscl_temperature,
        pscl_temperature=config.pscl_temperature,
        memory_bank_threshold=config.memory_bank_threshold,
        prototype_threshold=config.prototype_threshold,
        thresholds_calibrated=config.thresholds is not None,
        thresholds=[f"{threshold:.3g}" for threshold in config.thresholds] if config.thresholds else None,
        stage=stage,
        dataset_display=dataset_display,
        train_split=train_split,
        eval_description=eval_description,
        metrics_rows=[(metric_title(name), f"{value:.2f}") for name, value in metrics.items()],
        hyperparameters=hyperparameters,
        framework_versions=_framework_versions(),
    )


def save_model_card(model, output_dir: str | os.PathLike, **kwargs) -> Path:
    """Writes `output_dir/README.md` from [`create_model_card`]`(model, **kwargs)` and returns its path."""
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    create_model_card(model, **kwargs).save(path)
    return path


_ONNX_SECTION = re.compile(r"\n*<!-- onnx-runtime -->.*?<!-- /onnx-runtime -->\n?", re.DOTALL)


def add_onnx_results_to_model_card(
    path: str | os.PathLike, *, dataset: str, calibration_split: str, eval_split: str, fp32_map: float, int8_map: float
) -> Path:
    """Adds (or replaces) the card's "ONNX Runtime" section: the files in `onnx/`, how to serve them and the mAP of
    the float and static-int8 graphs on `eval_split` (written by `scripts/export_onnx.py --quantize int8`)."""
    path = Path(path)
    display = _dataset_display_name(dataset)
    section = (
        "<!-- onnx-runtime -->\n## ONNX Runtime\n\n"
        "`onnx/model.onnx` (float32) and `onnx/model_quantized.onnx` (static int8, QDQ, calibrated on the "
        f"`{calibration_split}` split of {display}) serve the model with ONNX Runtime:\n\n"
        "```python\n"
        'tagger = pipeline("multi-label-image-classification", model="<this repository>", backend="onnx-int8")\n'
        "```\n\n"
        f"| {display}, `{eval_split}` split | mAP (%) |\n|---|---|\n"
        f"| float32 (`onnx/model.onnx`) | {fp32_map:.2f} |\n"
        f"| int8 (`onnx/model_quantized.onnx`) | {int8_map:.2f} ({int8_map - fp32_map:+.2f} points) |\n"
        "<!-- /onnx-runtime -->\n"
    )
    text = _ONNX_SECTION.sub("\n", path.read_text(encoding="utf-8")).rstrip("\n")
    path.write_text(f"{text}\n\n{section}", encoding="utf-8")
    return path
