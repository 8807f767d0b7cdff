"""The training entry point behind `scripts/train.py`: parsing of the arguments (`sadcl_hf.training.arguments`) from
the command line and config files, and the paper's two-stage recipe (`--stage baseline`, then `--stage sadcl`; or
`--stage single`)."""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import datasets
import torch
import yaml
from transformers import EarlyStoppingCallback, HfArgumentParser, TrainerCallback, set_seed

from ..configuration_sadcl import SADCL_PRESETS, SADCLConfig
from ..data import (
    MultiLabelCollator,
    build_train_transform,
    dataset_info,
    dataset_label_names,
    load_multilabel_dataset,
    read_unreadable_list,
)
from ..data.streaming import load_streaming_dataset
from ..evaluation import check_dataset_labels
from ..image_processing import (
    backbone_normalization,
    encoded_images,
    eval_collator_for_config,
    image_processor_for_config,
)
from ..modeling_sadcl import SADCLForImageClassification
from .arguments import DataArguments, ModelArguments, SADCLTrainingArguments
from .prototypes import compute_dataset_prototypes, load_prototypes, save_prototypes
from .trainer import SADCLTrainer

__all__ = [
    "build_argument_parser",
    "build_model",
    "default_splits",
    "load_split",
    "parse_arguments",
    "read_config_file",
    "run_training",
]

logger = logging.getLogger(__name__)
# The Trainer's logs for `train.log` only: its progress callback already prints each of them to the console.
log_history_logger = logging.getLogger(f"{__name__}.log_history")
log_history_logger.propagate = False

UNREADABLE_IMAGES_FILE = "unreadable_images.txt"


def build_argument_parser() -> HfArgumentParser:
    """The parser of `scripts/train.py`. `--help` lists, in this order, the SADCL model options (stage, preset with
    its choices), the data options, the SADCL training options (`SADCLTrainingArguments`' own fields and paper
    defaults) and then the inherited `transformers.TrainingArguments`."""
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, SADCLTrainingArguments),
        usage="scripts/train.py [--config FILE] [--FIELD VALUE ...]",
        description="Train SADCL. `--config FILE` (YAML/JSON) sets any of the fields below; the command line wins. "
        f"Presets: {', '.join(SADCL_PRESETS)}.",
    )
    sadcl_fields = set(vars(SADCLTrainingArguments)["__annotations__"])
    sadcl_training = parser.add_argument_group(
        "SADCL training", "SADCL's additions to transformers.TrainingArguments and the paper's defaults."
    )
    for action in [action for action in parser._optionals._group_actions if action.dest in sadcl_fields]:
        parser._optionals._group_actions.remove(action)
        sadcl_training._group_actions.append(action)
    parser._optionals.title = "transformers.TrainingArguments"
    parser._action_groups.remove(parser._optionals)
    parser._action_groups.append(parser._optionals)
    return parser


def parse_arguments(argv: list[str] | None = None):
    """(ModelArguments, DataArguments, SADCLTrainingArguments) from `--config FILE` (YAML/JSON) and the command line;
    the command line wins. An unknown field, in the file or on the command line, is an error naming it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_argument_parser()
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise SystemExit("--config needs a file")
        path = Path(argv[index + 1])
        del argv[index : index + 2]
        parser.set_defaults(**read_config_file(path))
    *arguments, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        raise SystemExit(f"unknown argument(s) {remaining}; see `scripts/train.py --help`")
    return tuple(arguments)


def read_config_file(path: Path) -> dict[str, Any]:
    """Argument values from a YAML/JSON file; an unknown name is an error naming the file and the field."""
    if not path.is_file():
        raise SystemExit(f"--config: no such file {path}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise SystemExit(f"{path}: expected a mapping of argument names to values")
    known = {f.name for cls in (ModelArguments, DataArguments, SADCLTrainingArguments) for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SystemExit(f"{path}: unknown field(s) {unknown}; see `scripts/train.py --help`")
    return values


def default_splits(dataset: str) -> tuple[str, str]:
    """The benchmark's (training, evaluation) splits (the dataset registry's); ("train", "validation") for a name
    outside it."""
    try:
        info = dataset_info(dataset)
    except ValueError:
        return ("train", "validation")
    return info.train_split, info.eval_split


def load_split(data_args: DataArguments, split: str, limit: int | None = None):
    """One split of the dataset the arguments name (`dataset`, `dataset_root`, `dataset_options`), its first
    `limit` rows when given."""
    if data_args.streaming:
        if data_args.dataset_root is None:
            raise ValueError("--streaming needs --dataset_root: a folder of parquet shards or a Hub dataset id")
        dataset = load_streaming_dataset(data_args.dataset_root, split, **(data_args.dataset_options or {}))
        return dataset if limit is None else dataset.take(limit)
    if data_args.dataset_root is not None and not Path(data_args.dataset_root).exists():
        raise FileNotFoundError(
            f"dataset_root {data_args.dataset_root!r} (for dataset {data_args.dataset!r}) does not exist"
        )
    dataset = load_multilabel_dataset(
        data_args.dataset, root=data_args.dataset_root, split=split, **(data_args.dataset_options or {})
    )
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset


def build_model(model_args: ModelArguments, names: list[str]) -> SADCLForImageClassification:
    """A new model from the preset (with the dataset's label names), or a saved one whose labels must match."""
    overrides = dict(model_args.config_overrides or {})
    for name in ("backbone", "use_pretrained_backbone", "image_size", "sscl_mode"):
        if getattr(model_args, name) is not None:
            overrides[name] = getattr(model_args, name)
    overrides["objective"] = "asl" if model_args.stage == "baseline" else "sadcl"
    if model_args.model_name_or_path is None:
        config = SADCLConfig.from_preset(model_args.preset, id2label=dict(enumerate(names)), **overrides)
        return SADCLForImageClassification(config)
    model = SADCLForImageClassification.from_pretrained(model_args.model_name_or_path)
    check_dataset_labels(names, model.config, what="the training data")
    # The checkpoint holds the backbone's weights: whether a new model would fetch pretrained ones does not apply.
    overrides.pop("use_pretrained_backbone", None)
    architecture_fields = {"backbone", "image_size", "hidden_dim", "num_labels"}
    for name, value in overrides.items():
        if name in architecture_fields and getattr(model.config, name) != value:
            raise ValueError(f"cannot change {name} of the saved model {model_args.model_name_or_path}")
        setattr(model.config, name, value)
    model.criterion = type(model.criterion).from_config(model.config)
    return model


def _total_steps(training_args: SADCLTrainingArguments, train_dataset) -> int:
    if training_args.max_steps > 0:
        return training_args.max_steps  # also the only count a stream (no length) has
    num_examples = len(train_dataset)
    batch = training_args.per_device_train_batch_size * training_args.world_size
    batch *= training_args.gradient_accumulation_steps
    return math.ceil(num_examples / batch) * math.ceil(training_args.num_train_epochs)


def run_training(
    model_args: ModelArguments, data_args: DataArguments, training_args: SADCLTrainingArguments
) -> dict[str, Any]:
    """Runs one stage of the recipe; writes checkpoints, `OUTPUT_DIR/model`, `all_results.json` and
    `train_log.json` to `training_args.output_dir`. Returns the final evaluation metrics."""
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log_file = logging.FileHandler(output_dir / "train.log") if training_args.should_save else logging.NullHandler()
    log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("sadcl_hf")
    package_logger.addHandler(log_file)
    package_logger.setLevel(logging.INFO)
    log_history_logger.addHandler(log_file)
    try:
        return _run_stage(model_args, data_args, training_args, output_dir)
    finally:
        package_logger.removeHandler(log_file)
        log_history_logger.removeHandler(log_file)
        log_file.close()


class _TrainLogCallback(TrainerCallback):
    """Writes each Trainer log (loss, its components, learning rate, metrics) to `train.log`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            log_history_logger.info("step %d: %s", state.global_step, json.dumps(logs))


def _run_stage(model_args, data_args, training_args, output_dir: Path) -> dict[str, Any]:
    set_seed(training_args.seed)

    default_train, default_eval = default_splits(data_args.dataset)
    train_split = data_args.train_split or default_train
    eval_split = data_args.eval_split or default_eval
    if data_args.streaming and training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps: a stream has no length to count epochs with")
    train_dataset = load_split(data_args, train_split, data_args.max_train_samples)
    if data_args.streaming:
        train_dataset = train_dataset.shuffle(seed=training_args.seed, buffer_size=1000)
    eval_dataset = load_split(data_args, eval_split, data_args.max_eval_samples)
    model = build_model(model_args, dataset_label_names(train_dataset))
    check_dataset_labels(dataset_label_names(eval_dataset), model.config, what=f"{data_args.dataset} ({eval_split})")
    if model_args.channels_last:
        model.sadcl.backbone.to(memory_format=torch.channels_last)
    config = model.config
    mean, std = backbone_normalization(config)
    unreadable_list = output_dir / UNREADABLE_IMAGES_FILE
    if not training_args.resume_from_checkpoint and training_args.should_save:
        unreadable_list.unlink(missing_ok=True)  # a fresh run lists its own unreadable images; a resumed one adds
    train_collator = MultiLabelCollator(
        config.num_labels,
        build_train_transform(
            config.image_size,
            mean,
            std,
            resize_margin=data_args.resize_margin,
            scales=data_args.crop_scales,
            hflip=data_args.hflip,
            randaugment=data_args.randaugment,
            cutout=data_args.cutout,
        ),
        max_unreadable_fraction=data_args.max_unreadable_fraction,
        unreadable_list=unreadable_list,
    )
    # images decoded by the collator, where an unreadable one can be skipped (decoding in the dataset would raise)
    train_dataset = train_dataset.cast_column("image", datasets.Image(decode=False))
    image_processor = image_processor_for_config(config)
    eval_collator = eval_collator_for_config(
        config, image_processor, data_args.max_unreadable_fraction, unreadable_list
    )  # drops an unreadable evaluation image from the metrics
    eval_dataset = encoded_images(eval_dataset)  # decoded by the collator as in the pipeline (JPEG draft size)

    if model_args.stage == "baseline":
        model.prototypes.requires_grad_(False)
        model.projector.requires_grad_(False)
    elif model_args.stage == "sadcl":
        _initialise_prototypes(model, model_args, data_args, train_dataset, training_args, output_dir)
    else:
        steps = _total_steps(training_args, train_dataset)
        training_args.online_prototype_steps = training_args.online_prototype_steps or max(
            1, round(model_args.online_prototype_fraction * steps)
        )

    callbacks = [_TrainLogCallback()]
    if training_args.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training_args.early_stopping_patience))
    trainer = SADCLTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=train_collator,
        eval_data_collator=eval_collator,
        processing_class=image_processor,
        callbacks=callbacks,
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    unreadable = read_unreadable_list(unreadable_list)
    if unreadable:
        train_result.metrics["train_unreadable_images"] = len(unreadable)
        logger.warning("Skipped %d unreadable image(s), listed in %s", len(unreadable), unreadable_list)
    trainer.save_metrics("train", train_result.metrics)
    metrics = _evaluation_of_final_weights(trainer) or trainer.evaluate()
    trainer.save_metrics("eval", metrics)
    trainer.save_final_model(
        output_dir / "model",
        dataset_name=data_args.dataset,
        stage=model_args.stage,
        train_split=train_split,
        eval_split=eval_split,
    )
    if training_args.should_save:
        (output_dir / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=2))
    return {**train_result.metrics, **metrics}


def _evaluation_of_final_weights(trainer: SADCLTrainer) -> dict[str, Any]:
    """The metrics of an evaluation logged at the last training step (`eval_*`, `eval_ema_*`), so that the same
    weights are not evaluated (and logged) twice; empty when there was none or the best checkpoint was reloaded."""
    if trainer.args.load_best_model_at_end:
        return {}
    final_step = [entry for entry in trainer.state.log_history if entry.get("step") == trainer.state.global_step]
    metrics = {key: value for entry in final_step for key, value in entry.items() if key.startswith("eval_")}
    return metrics if "eval_loss" in metrics else {}


def _initialise_prototypes(model, model_args, data_args, train_dataset, training_args, output_dir: Path) -> None:
    """Stage 2: prototypes from a file, or from the stage-1 model (mean confident positive label feature)."""
    if model_args.prototypes is not None:
        prototypes = load_prototypes(model_args.prototypes, model.config.num_labels, model.config.hidden_dim)
    elif model_args.model_name_or_path is not None:
        prototypes, _ = compute_dataset_prototypes(
            model,
            train_dataset,
            batch_size=training_args.per_device_eval_batch_size,
            num_workers=training_args.dataloader_num_workers,
            max_unreadable_fraction=data_args.max_unreadable_fraction,
            unreadable_list=output_dir / UNREADABLE_IMAGES_FILE,
        )
        if training_args.should_save:
            save_prototypes(prototypes, output_dir / "prototypes.safetensors")
    else:
        raise ValueError(
            "--stage sadcl needs the stage-1 model (--model_name_or_path) or --prototypes FILE; "
            "without a stage-1 model use --stage single"
        )
    with torch.no_grad():
        model.prototypes.copy_(prototypes.to(model.prototypes))
    model.reset_memory_bank(0)
