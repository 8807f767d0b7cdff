"""`SADCLTrainer`: transformers' Trainer with the SADCL objective, its logged components, EMA weights, one-cycle
schedule, online prototype initialisation and checkpoints that restore the memory bank and the EMA."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from safetensors.torch import load_file, save_file
from timm.utils.model_ema import ModelEmaV3
from transformers import Trainer, TrainerCallback, TrainingArguments

from .evaluation import compute_metrics as multilabel_compute_metrics
from .model_card import record_training_summary, save_model_card
from .prototypes import OnlinePrototypeInitializer

__all__ = ["SADCLTrainer", "SADCLTrainingArguments"]

logger = logging.getLogger(__name__)

EMA_WEIGHTS_NAME = "ema.safetensors"
ONLINE_PROTOTYPES_NAME = "online_prototypes.safetensors"
LOSS_COMPONENTS = ("asl", "sscl", "pscl")


def _memory_bank_name(process_index: int) -> str:
    return f"memory_bank-rank{process_index}.safetensors"


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

    def __post_init__(self):
        super().__post_init__()
        if self.lr_schedule not in ("one_cycle", "trainer"):
            raise ValueError(f"lr_schedule must be 'one_cycle' or 'trainer', got {self.lr_schedule!r}")
        if self.early_stopping_patience is not None and not (
            self.load_best_model_at_end and self.metric_for_best_model
        ):
            raise ValueError("early_stopping_patience needs load_best_model_at_end and metric_for_best_model")


class _EMAUpdateCallback(TrainerCallback):
    """Updates the EMA and the online prototypes after each optimizer step."""

    def __init__(self, trainer: "SADCLTrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._after_optimizer_step(state.global_step)


class SADCLTrainer(Trainer):
    """Trains a `SADCLForImageClassification` with its own objective (`outputs.loss`, eq. 12), logging the mean of
    each component (`asl`, `sscl`, `pscl`) alongside the loss.

    - EMA weights (timm `ModelEmaV3`, decay `args.ema_decay`): `evaluate()` reports the raw model (`eval_*`) and the
      EMA (`eval_ema_*`); checkpoints hold `ema.safetensors`; `save_final_model()` exports the EMA by default.
    - The memory bank is updated by the model's training forward; checkpoints save it per process and resuming
      restores it, with the optimizer, scheduler, RNG and EMA (Trainer's own mechanism).
    - `args.online_prototype_steps > 0` (stage "single"): the prototypes follow the running means of confident
      positive features (synchronised across processes) for the first steps, then train through PSCL.
    - `compute_metrics` defaults to the paper's metrics (`sadcl_hf.evaluation.compute_metrics`).
    - Model cards: `save_final_model` writes the SADCL card and records the run in the exported model's config
      (`sadcl_hf.model_card.record_training_summary`); `push_to_hub` uploads the SADCL card (`create_model_card`).
    - Gradient accumulation averages: the loss of each micro-batch is its own mean, divided by the accumulation
      steps; the logged loss and components are means over the micro-batches.
    """

    # `compute_loss` returns a per-micro-batch mean (it does not use `num_items_in_batch`): the Trainer divides it by
    # the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, eval_data_collator=None, **kwargs):
        kwargs.setdefault("compute_metrics", multilabel_compute_metrics)
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_count = 0
        self.ema = None
        if self.args.use_ema:
            self.ema = ModelEmaV3(self.model, decay=self.args.ema_decay, use_warmup=self.args.ema_warmup)
        self.online_prototypes = None
        if self.args.online_prototype_steps > 0:
            config = self.model.config
            self.online_prototypes = OnlinePrototypeInitializer(
                config.num_labels, config.hidden_dim, threshold=config.prototype_threshold
            )
        self.add_callback(_EMAUpdateCallback(self))

    # Data: evaluation batches get their own (deterministic) transform.

    @contextlib.contextmanager
    def _eval_collator(self):
        train_collator = self.data_collator
        if self.eval_data_collator is not None:
            self.data_collator = self.eval_data_collator
        try:
            yield
        finally:
            self.data_collator = train_collator

    def get_train_dataloader(self):
        """A streamed training set (`datasets.IterableDataset`) in a multi-process run: each process reads its own part
        (`datasets.distributed.split_dataset_by_node`: whole shards when their number is a multiple of the processes,
        else every `world_size`-th example), batched here instead of being re-sharded by accelerate."""
        dataset = self.train_dataset
        if not (isinstance(dataset, datasets.IterableDataset) and self.args.world_size > 1):
            return super().get_train_dataloader()
        return torch.utils.data.DataLoader(
            split_dataset_by_node(dataset, rank=self.args.process_index, world_size=self.args.world_size),
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )

    def get_eval_dataloader(self, eval_dataset=None):
        with self._eval_collator():
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with self._eval_collator():
            return super().get_test_dataloader(test_dataset)

    # Objective and logging.

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs.loss
        if model.training:
            for name in LOSS_COMPONENTS:
                value = outputs.get(f"{name}_loss")
                if value is not None:
                    total = self._component_sums.get(name, torch.zeros((), device=value.device))
                    self._component_sums[name] = total + value.detach().float()
            self._component_count += 1
            if self.online_prototypes is not None and self.state.global_step < self.args.online_prototype_steps:
                self.online_prototypes.update(outputs.label_features, outputs.logits, inputs["labels"])
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._component_count:
            for name, total in self._component_sums.items():
                mean = self.accelerator.reduce(total / self._component_count, reduction="mean")
                logs[name] = round(mean.item(), 4)
            self._component_sums, self._component_count = {}, 0
        super().log(logs, start_time)

    # Optimizer and schedule.

    def create_optimizer(self, model=None):
        """AdamW over trainable parameters, with an optional separate backbone learning rate."""
        if self.optimizer is not None or self.args.backbone_learning_rate is None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                is_backbone = ".backbone." in f".{name}"
                groups.setdefault((is_backbone, name in decay), []).append(param)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        param_groups = [
            {
                "params": params,
                "weight_decay": self.args.weight_decay if with_decay else 0.0,
                "lr": self.args.backbone_learning_rate if is_backbone else self.args.learning_rate,
            }
            for (is_backbone, with_decay), params in groups.items()
        ]
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The paper's one-cycle schedule (`torch.optim.lr_scheduler.OneCycleLR`) unless `lr_schedule='trainer'`."""
        if self.lr_scheduler is None and self.args.lr_schedule == "one_cycle":
            optimizer = optimizer if optimizer is not None else self.optimizer
            self.lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[group["lr"] for group in optimizer.param_groups],
                total_steps=max(num_training_steps, 2),
                pct_start=self.args.one_cycle_pct_start,
            )
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    # EMA and online prototypes.

    def _after_optimizer_step(self, global_step: int) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if self.online_prototypes is not None:
            if global_step <= self.args.online_prototype_steps:
                self._set_online_prototypes(model, final=global_step == self.args.online_prototype_steps)
            else:  # resumed after the online phase
                self.online_prototypes = None
        if self.ema is not None:
            self.ema.update(model, step=global_step)

    @torch.no_grad()
    def _set_online_prototypes(self, model, final: bool) -> None:
        counts = self.online_prototypes.counts.to(model.prototypes.device).float()
        means = self.online_prototypes.prototypes(torch.zeros_like(model.prototypes)).to(model.prototypes.device)
        sums = self.accelerator.reduce(means * counts[:, None], reduction="sum")
        counts = self.accelerator.reduce(counts, reduction="sum")
        seen = counts > 0
        model.prototypes[seen] = (sums[seen] / counts[seen, None]).to(model.prototypes.dtype)
        model.reset_memory_bank(model.memory_bank.shape[0])
        if final:
            unseen = [model.config.id2label[i] for i in torch.nonzero(~seen).flatten().tolist()]
            if unseen:
                logger.warning("online prototypes: no confident positive seen for %s; they keep their init", unseen)
            self.online_prototypes = None

    @contextlib.contextmanager
    def ema_model(self):
        """Temporarily makes the EMA the trainer's model (for evaluation or prediction)."""
        if self.ema is None:
            raise ValueError("EMA is disabled (use_ema=False)")
        raw = self.model
        self.model = self.ema.module
        try:
            yield self.ema.module
        finally:
            self.model = raw

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Metrics of the raw model (`{prefix}_*`) and, with EMA, of the EMA weights (`{prefix}_ema_*`)."""
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.ema is not None:
            with self.ema_model():
                metrics.update(super().evaluate(eval_dataset, ignore_keys, f"{metric_key_prefix}_ema"))
        return metrics

    def train(self, *args, **kwargs):
        """transformers' `train`; the results a loaded model recorded (`config.training_summary`) describe weights
        that training changes, so they are dropped."""
        for model in (self.accelerator.unwrap_model(self.model), self.ema.module if self.ema is not None else None):
            if model is not None:
                model.config.training_summary = None
        result = super().train(*args, **kwargs)
        self._check_processes_in_sync()
        return result

    @torch.no_grad()
    def _check_processes_in_sync(self) -> None:
        """With several processes, checks that every one ends with the same weights (a cheap checksum)."""
        if self.args.world_size <= 1:
            return
        model = self.accelerator.unwrap_model(self.model)
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
        checksums = self.accelerator.gather(checksum.to(self.accelerator.device)).cpu()
        if not torch.allclose(checksums, checksums[0].expand_as(checksums), rtol=1e-9, atol=0.0):
            raise RuntimeError(f"processes ended training with different weights (checksums {checksums.tolist()})")
        logger.info("weights identical on all %d processes after training", self.args.world_size)

    # Checkpoints.

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        output_dir = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        output_dir.mkdir(parents=True, exist_ok=True)
        unwrapped = self.accelerator.unwrap_model(self.model)
        save_file(
            {"memory_bank": unwrapped.memory_bank.detach().contiguous().cpu()},
            output_dir / _memory_bank_name(self.args.process_index),
        )
        if self.args.should_save and self.ema is not None:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in self.ema.module.state_dict().items()},
                output_dir / EMA_WEIGHTS_NAME,
            )
        if self.online_prototypes is not None:
            state = {k: v.detach().contiguous().cpu() for k, v in self.online_prototypes.state_dict().items()}
            save_file(state, output_dir / f"rank{self.args.process_index}-{ONLINE_PROTOTYPES_NAME}")

    def _load_best_model(self):
        """`load_best_model_at_end`: the best checkpoint's EMA weights come back with its raw weights."""
        super()._load_best_model()
        ema_file = Path(self.state.best_model_checkpoint) / EMA_WEIGHTS_NAME
        if self.ema is not None and ema_file.is_file():
            self.ema.module.load_state_dict(load_file(ema_file, device=str(self.ema.module.prototypes.device)))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        folder = Path(resume_from_checkpoint)
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        bank_file = folder / _memory_bank_name(self.args.process_index)
        if bank_file.is_file():
            unwrapped.memory_bank = load_file(bank_file)["memory_bank"].to(unwrapped.prototypes.device)
        else:
            logger.warning("%s: no memory bank saved; it restarts from the prototypes", folder)
        ema_file = folder / EMA_WEIGHTS_NAME
        if self.ema is not None:
            if ema_file.is_file():
                state = load_file(ema_file, device=str(unwrapped.prototypes.device))
                self.ema.module.load_state_dict(state)
            else:
                logger.warning("%s: no EMA weights saved; the EMA restarts from the current weights", folder)
                self.ema.set(unwrapped)
        online_file = folder / f"rank{self.args.process_index}-{ONLINE_PROTOTYPES_NAME}"
        if self.online_prototypes is not None and online_file.is_file():
            self.online_prototypes.load_state_dict(load_file(online_file))

    def latest_evaluation(self, prefix: str = "eval") -> dict[str, float]:
        """The metrics of the latest evaluation logged under `prefix` (`"eval"`: the raw weights, `"eval_ema"`: the
        EMA), without the prefix; empty when there was none."""
        for entry in reversed(self.state.log_history):
            if f"{prefix}_loss" in entry:
                start = f"{prefix}_"
                return {key.removeprefix(start): value for key, value in entry.items() if key.startswith(start)}
        return {}

    def save_final_model(
        self, output_dir: str | os.PathLike, use_ema: bool | None = None, image_processor=None, **summary
    ):
        """Saves a Hub-ready folder: weights (EMA by default when kept), config with label names, remote code, the
        image processor and the SADCL model card (README.md). Returns the saved model.

        `summary`: [`record_training_summary`]'s `dataset_name` (which enables it), `stage`, `train_split`,
        `eval_split`, `dataset_id`. The latest evaluation of the saved weights and the training arguments are
        recorded with them in the saved config, for this card and every later one (e.g. `model.push_to_hub`).
        """
        use_ema = self.ema is not None if use_ema is None else use_ema
        model = self.ema.module if use_ema else self.accelerator.unwrap_model(self.model)
        if summary.get("dataset_name"):
            metrics = self.latest_evaluation("eval_ema" if use_ema else "eval")
            record_training_summary(model, metrics, training_args=self.args, **summary)
        if self.args.should_save:
            model.save_pretrained(output_dir)
            processor = image_processor if image_processor is not None else self.processing_class
            if processor is not None:
                processor.save_pretrained(output_dir)
            save_model_card(model, output_dir)
        self.accelerator.wait_for_everyone()
        return model

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """Writes the SADCL model card (`sadcl_hf.model_card`) to `args.output_dir/README.md` instead of
        transformers' generic draft; `push_to_hub(**kwargs)` passes its keyword arguments here and uploads it.

        The card describes the weights `push_to_hub` saves (the trainer's model), their latest evaluation
        (`eval_*`) as the `model-index`, and the training arguments. `dataset` names the evaluation dataset (default:
        the one the model recorded); `language`, `finetuned_from`, `tasks`, `dataset_tags` and `dataset_args` are
        not used.
        """
        if not self.is_world_process_zero():
            return
        model = self.accelerator.unwrap_model(self.model)
        dataset_name = dataset[0] if isinstance(dataset, list) else dataset
        metrics = self.latest_evaluation("eval")
        if metrics and not (dataset_name or (model.config.training_summary or {}).get("dataset_name")):
            raise ValueError(
                "the model card's model-index needs the evaluation dataset: pass dataset=... to push_to_hub "
                "(or create_model_card)"
            )
        save_model_card(
            model,
            self.args.output_dir,
            metrics=metrics or None,
            dataset_name=dataset_name,
            training_args=self.args,
            model_id=getattr(self, "hub_model_id", None) or model_name,
            license=license or "apache-2.0",
            tags=[tags] if isinstance(tags, str) else tags,
        )
