"""Model cards (the repository `README.md`) for SADCL checkpoints, and the card data a run produced.

What a run produced (dataset, splits, recipe stage, hyper-parameters, the metrics of each evaluation, EMA,
calibration and ONNX results) is [`SADCLModelCardData`], kept on the model as `model.model_card_data` (as setfit's
and span-marker's `ModelCardData`): [`ModelCardCallback`](sadcl_hf.training.callbacks) fills it during training,
scripts add calibration and ONNX results. `config.json` holds the architecture (and thresholds, label names) only.

Beside the model, [`save_model_card`] writes `README.md` (the Jinja template `sadcl_hf/templates/model_card.md`
filled through `huggingface_hub.ModelCard.from_template`: YAML Hub metadata with the results as a `model-index`, the
body) and `model_card_data.json` ([`CARD_DATA_NAME`]), the card data as it was recorded. A JSON file rather than the
README's YAML header: the header follows the Hub's schema (rounded values, one `model-index` layout) and is edited by
people on the Hub, while the JSON keeps every recorded value exactly, so a loaded folder's card can be rendered again
(another repository id, new calibration or ONNX results, a newer template) without losing results.
[`model_card_data_of`] loads it back for a model loaded from a folder; folders saved before it existed keep their
results in `config.json`'s old `training_summary` field, read once from that file as a fallback (the config drops it).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .data.loading import dataset_info
from .evaluation import METRIC_TITLES, MULTI_LABEL_TASK, metric_title, split_metric_name

__all__ = [
    "CARD_DATA_NAME",
    "MODEL_CARD_TEMPLATE_PATH",
    "SADCLModelCardData",
    "add_calibration_to_model_card",
    "add_onnx_results_to_model_card",
    "create_model_card",
    "model_card_data_of",
    "record_training_summary",
    "save_model_card",
]

MODEL_CARD_TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "model_card.md"
CARD_DATA_NAME = "model_card_data.json"

_METRIC_PREFIXES = ("eval_ema_", "eval_", "test_", "validation_", "val_")
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
    ("max_steps", -1),
    ("warmup_ratio", 0),
    ("warmup_steps", 0),
    ("bf16", False),
    ("fp16", False),
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


@dataclass
class SADCLModelCardData:
    """What a training run (and the scripts after it) produced, for the model card; `model.model_card_data`.

    Args:
        dataset_name: the dataset trained and evaluated on (registry name such as `"coco2014"`, or a Hub id).
        dataset_id: the dataset's Hub id for the metadata (default `dataset_name`).
        train_split / eval_split: split names shown with the training data and the results.
        stage: the training-recipe stage that produced the weights (e.g. `"sadcl"`).
        hyperparameters: `{name: value as text}` of the training arguments.
        metrics: the latest evaluation of the raw weights, `{"map": 84.1, ...}` in percent.
        ema_metrics: the latest evaluation of the EMA weights, same form.
        ema_decay: the EMA decay, when an EMA was kept.
        uses_ema_weights: the saved weights are the EMA (the card then shows `ema_metrics`).
        global_step: optimisation steps the run took.
        calibration: per-class threshold calibration, `{"dataset", "split", "num_images", "before", "after"}`.
        onnx: ONNX Runtime results, `{"dataset", "calibration_split", "eval_split", "fp32_map", "int8_map"}`.
        source: a markdown section on where the weights come from (converted checkpoints).
        model_id / license / tags: the Hub repository id, SPDX license of the weights, extra Hub tags.
    """

    dataset_name: str | None = None
    dataset_id: str | None = None
    train_split: str | None = None
    eval_split: str | None = None
    stage: str | None = None
    hyperparameters: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    ema_metrics: dict[str, float] = field(default_factory=dict)
    ema_decay: float | None = None
    uses_ema_weights: bool = False
    global_step: int | None = None
    calibration: dict[str, Any] | None = None
    onnx: dict[str, Any] | None = None
    source: str | None = None
    model_id: str | None = None
    license: str = "apache-2.0"
    tags: list[str] = field(default_factory=list)

    @property
    def results(self) -> dict[str, float]:
        """The metrics of the saved weights (the EMA's when they are the EMA), shown as the `model-index`."""
        return self.ema_metrics if self.uses_ema_weights else self.metrics

    def record_hyperparameters(self, training_args: Mapping[str, Any] | Any) -> None:
        """Keeps the training arguments: a dict (all entries) or `transformers.TrainingArguments` (the usual ones)."""
        self.hyperparameters = dict(_training_hyperparameters(training_args))

    def record_metrics(self, metrics: Mapping[str, Any], ema: bool = False) -> None:
        """Keeps an evaluation of the raw weights (`ema=True`: of the EMA): the metric keys of `metrics`, Trainer
        prefixes (`eval_`, `eval_ema_`) removed, in percent. Raw metrics given this way become the shown results."""
        if ema:
            self.ema_metrics = _normalise_metrics(metrics)
        else:
            self.metrics, self.uses_ema_weights = _normalise_metrics(metrics), False

    def reset_results(self) -> None:
        """Forgets what describes the weights and their data (training changes them); keeps `source`, `model_id`,
        `license` and `tags`."""
        kept = ("source", "model_id", "license", "tags")
        kept = {name: getattr(self, name) for name in kept}
        for item in dataclasses.fields(self):
            value = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            setattr(self, item.name, kept.get(item.name, value))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "model card data") -> SADCLModelCardData:
        """Raises `ValueError` naming `source` and the unknown keys."""
        names = {item.name for item in dataclasses.fields(cls)}
        if not isinstance(values, Mapping) or set(values) - names:
            unknown = sorted(set(values) - names) if isinstance(values, Mapping) else type(values).__name__
            raise ValueError(f"{source}: expected a mapping with keys among {sorted(names)}, got {unknown}")
        return cls(**values)

    def save(self, folder: str | os.PathLike) -> Path:
        """Writes `folder/model_card_data.json`; returns its path."""
        path = Path(folder) / CARD_DATA_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> SADCLModelCardData:
        """The card data saved in `folder`; else the old `training_summary` of its config.json; else empty."""
        folder = Path(folder)
        path = folder / CARD_DATA_NAME
        if path.is_file():
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
        config_path = folder / "config.json"
        if config_path.is_file():
            legacy = json.loads(config_path.read_text(encoding="utf-8")).get("training_summary")
            if legacy:
                return cls.from_dict(legacy, f"{config_path} (training_summary)")
        return cls()


def model_card_data_of(model) -> SADCLModelCardData:
    """`model.model_card_data`; on first use, loaded from the folder the model was loaded from
    (`model.name_or_path`, [`SADCLModelCardData.load`]) or empty, and attached."""
    card_data = getattr(model, "model_card_data", None)
    if card_data is None:
        folder = getattr(model, "name_or_path", "")
        card_data = SADCLModelCardData.load(folder) if folder and Path(folder).is_dir() else SADCLModelCardData()
        model.model_card_data = card_data
    return card_data


def record_training_summary(
    model,
    metrics: Mapping[str, Any] | None,
    dataset_name: str,
    *,
    training_args: Mapping[str, Any] | Any | None = None,
    stage: str | None = None,
    train_split: str | None = None,
    eval_split: str | None = None,
    dataset_id: str | None = None,
) -> SADCLModelCardData:
    """Records a run's dataset, splits, stage, hyper-parameters and the metrics of the weights being saved in
    `model.model_card_data` (`metrics` replace the shown results). Returns the card data."""
    if not dataset_name:
        raise ValueError("record_training_summary needs dataset_name, the dataset the metrics were measured on")
    card_data = model_card_data_of(model)
    card_data.dataset_name, card_data.dataset_id = dataset_name, dataset_id or card_data.dataset_id
    card_data.stage = stage or card_data.stage
    card_data.train_split = train_split or card_data.train_split
    card_data.eval_split = eval_split or card_data.eval_split
    if training_args is not None:
        card_data.record_hyperparameters(training_args)
    if metrics is not None:
        card_data.record_metrics(metrics)
    return card_data


def _calibration_rows(calibration: Mapping[str, Any] | None) -> list[tuple[str, str, str]]:
    """[(metric title, before, after)] of a recorded calibration."""
    if not calibration:
        return []
    before, after = _normalise_metrics(calibration["before"]), _normalise_metrics(calibration["after"])
    return [(metric_title(name), f"{before[name]:.2f}", f"{after[name]:.2f}") for name in after if name in before]


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
    license: str | None = None,
    tags: list[str] | None = None,
    card_data: SADCLModelCardData | None = None,
) -> ModelCard:
    """Builds the model card of a SADCL checkpoint from its card data.

    `card_data` defaults to the model's ([`model_card_data_of`]; empty for a config). Every other argument given
    replaces the card data's field in a copy (the model's own card data is not changed).

    Args:
        model_or_config: a `SADCLForImageClassification` (adds the parameter count) or its `SADCLConfig`.
        metrics: evaluation results in percent as [`multilabel_metrics`] returns them (`map`, `cp`, ..., `of1_top3`;
            Trainer prefixes such as `eval_` are removed, other keys ignored). They go into the `model-index`.
        dataset_name: the dataset trained and evaluated on (e.g. `"coco2014"`); required with `metrics`.
        training_args: hyper-parameters, a dict (all entries shown) or `transformers.TrainingArguments` (the usual
            ones shown).
        stage / model_id / dataset_id / eval_split / train_split / license / tags: as in [`SADCLModelCardData`];
            `model_id` defaults to `sadcl-<backbone>-<dataset>`.

    Returns:
        `huggingface_hub.ModelCard`; `card.save(path)` writes it, `ModelCard.load(path)` reads it back.
    """
    data = _card_data_with(
        model_or_config, card_data, metrics, training_args, dataset_name=dataset_name, dataset_id=dataset_id,
        stage=stage, eval_split=eval_split, train_split=train_split, model_id=model_id, license=license, tags=tags,
    )  # fmt: skip
    return _render(model_or_config, data)


def _card_data_with(model_or_config, card_data, metrics, training_args, **overrides) -> SADCLModelCardData:
    """A copy of `card_data` (default: the model's, empty for a config) with the given fields replaced."""
    if card_data is None:
        is_model = hasattr(model_or_config, "config")
        card_data = model_card_data_of(model_or_config) if is_model else SADCLModelCardData()
    data = dataclasses.replace(card_data)
    for name, value in overrides.items():
        if not hasattr(data, name):
            raise TypeError(f"unexpected model card argument {name!r}: not a field of SADCLModelCardData")
        if value is not None:
            setattr(data, name, value)
    if training_args is not None:
        data.record_hyperparameters(training_args)
    if metrics is not None:
        data.record_metrics(metrics)
    return data


def _render(model_or_config, data: SADCLModelCardData) -> ModelCard:
    """The card showing `data`."""
    config = getattr(model_or_config, "config", model_or_config)
    label_names = config.label_names
    metrics = _normalise_metrics(data.results)
    dataset_name, dataset_id, stage = data.dataset_name, data.dataset_id, data.stage
    eval_split, train_split, hyperparameters = data.eval_split, data.train_split, list(data.hyperparameters.items())
    if metrics and not dataset_name:
        raise ValueError("metrics were given without dataset_name; the model-index needs the evaluation dataset")
    model_id = data.model_id or _default_model_id(config, dataset_name)
    license, tags = data.license, data.tags
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
    eval_description = (
        f"Results on {dataset_display}"
        + (f" (`{eval_split}` split)" if eval_split else "")
        + (", with the per-class thresholds stored in the config." if config.thresholds else ", at threshold 0.5.")
    )
    card = ModelCard.from_template(
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
        ema_decay=data.ema_decay if data.uses_ema_weights else None,
        global_step=data.global_step,
        calibration=data.calibration,
        calibration_rows=_calibration_rows(data.calibration),
        calibration_dataset=_dataset_display_name(data.calibration["dataset"]) if data.calibration else None,
        onnx_section=_onnx_section(**data.onnx) if data.onnx else None,
        source=data.source,
        framework_versions=_framework_versions(),
    )
    return card


def save_model_card(model, output_dir: str | os.PathLike, **kwargs) -> Path:
    """Writes `output_dir/README.md` from [`create_model_card`]`(model, **kwargs)` and the card data it shows as
    `output_dir/model_card_data.json`; that card data (the given arguments included) becomes the model's
    `model_card_data`. Returns the README's path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    card_data = kwargs.pop("card_data", None)
    metrics, training_args = kwargs.pop("metrics", None), kwargs.pop("training_args", None)
    data = _card_data_with(model, card_data, metrics, training_args, **kwargs)
    if hasattr(model, "config"):
        model.model_card_data = data
    path = output_dir / "README.md"
    _render(model, data).save(path)
    data.save(output_dir)
    return path


def _onnx_section(dataset: str, calibration_split: str, eval_split: str, fp32_map: float, int8_map: float) -> str:
    """The card's "ONNX Runtime" section: the files in `onnx/`, how to serve them, the float and int8 mAP."""
    display = _dataset_display_name(dataset)
    return (
        "## ONNX Runtime\n\n"
        "`onnx/model.onnx` (float32) and `onnx/model_quantized.onnx` (static int8, QDQ, calibrated on the "
        f"`{calibration_split}` split of {display}) serve the model with ONNX Runtime:\n\n"
        "```python\n"
        'tagger = pipeline("multi-label-image-classification", model="<this repository>", backend="onnx-int8")\n'
        "```\n\n"
        f"| {display}, `{eval_split}` split | mAP (%) |\n|---|---|\n"
        f"| float32 (`onnx/model.onnx`) | {fp32_map:.2f} |\n"
        f"| int8 (`onnx/model_quantized.onnx`) | {int8_map:.2f} ({int8_map - fp32_map:+.2f} points) |\n"
    )


def add_onnx_results_to_model_card(
    model,
    output_dir: str | os.PathLike,
    *,
    dataset: str,
    calibration_split: str,
    eval_split: str,
    fp32_map: float,
    int8_map: float,
) -> Path:
    """Records the mAP of the float and static-int8 ONNX graphs on `eval_split` in `model`'s card data and writes
    the card again to `output_dir` (`scripts/export_onnx.py --quantize int8`). Returns the README path."""
    model_card_data_of(model).onnx = {
        "dataset": dataset, "calibration_split": calibration_split, "eval_split": eval_split,
        "fp32_map": float(fp32_map), "int8_map": float(int8_map),
    }  # fmt: skip
    return save_model_card(model, output_dir)


def add_calibration_to_model_card(
    model, output_dir: str | os.PathLike, report: Mapping[str, Any], *, dataset: str, split: str
) -> Path:
    """Records a threshold calibration ([`calibrate_thresholds`]'s report) in `model`'s card data and writes the
    card again to `output_dir` (`scripts/calibrate_thresholds.py`). Returns the README path."""
    model_card_data_of(model).calibration = {
        "dataset": dataset, "split": split, "num_images": int(report["num_images"]),
        "before": _normalise_metrics(report["before"]), "after": _normalise_metrics(report["after"]),
    }  # fmt: skip
    return save_model_card(model, output_dir)
