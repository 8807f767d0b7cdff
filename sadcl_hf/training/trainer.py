"""`SADCLTrainer`: transformers' Trainer with the SADCL objective and its logged components, the paper's parameter
groups and one-cycle schedule, and evaluation of the EMA weights. EMA updates, online prototypes and the state kept
next to checkpoints are callbacks (`sadcl_hf.training.callbacks`)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from timm.utils.model_ema import ModelEmaV3
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..evaluation import compute_metrics as multilabel_compute_metrics
from ..model_card import model_card_data_of, save_model_card
from .callbacks import (
    CheckpointStateCallback,
    EMAUpdateCallback,
    ModelCardCallback,
    OnlinePrototypeCallback,
    WeightSyncCheckCallback,
    checkpoint_folders,
    checkpoint_is_complete,
    mark_checkpoint_complete,
    resolve_resume_checkpoint,
)

__all__ = ["SADCLTrainer"]

logger = logging.getLogger(__name__)


class _EpochDataLoader(torch.utils.data.DataLoader):
    """A `DataLoader` whose `set_epoch` (called by the Trainer before each epoch) reaches its dataset (a shuffled
    `datasets.IterableDataset` draws its shard and buffer order from the epoch)."""

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


class SADCLTrainer(Trainer):
    """Trains a `SADCLForImageClassification` with its own objective (`outputs.loss`, eq. 12), logging the mean of
    each component (`asl`, `sscl`, `pscl`) alongside the loss.

    - EMA weights (timm `ModelEmaV3`, decay `args.ema_decay`, updated by [`EMAUpdateCallback`]): `evaluate()`
      reports the raw model (`eval_*`) and the EMA (`eval_ema_*`); `save_final_model()` exports the EMA by default.
    - The memory bank is updated by the model's training forward; [`CheckpointStateCallback`] saves it per process
      with each checkpoint, with the EMA, and `train(resume_from_checkpoint=...)` restores them.
    - `args.online_prototype_steps > 0` (stage "single"): [`OnlinePrototypeCallback`] makes the prototypes the
      running means of confident positive features for the first steps; then they train through PSCL.
    - `eval_data_collator`: the collator of evaluation and prediction batches (default: `data_collator`), e.g.
      [`eval_collator_for_config`] while `data_collator` augments.
    - `compute_metrics` defaults to the paper's metrics (`sadcl_hf.evaluation.compute_metrics`).
    - Model cards: [`ModelCardCallback`] records the run in the model's card data (`model.model_card_data`,
      `sadcl_hf.model_card.SADCLModelCardData`); `save_final_model` writes it with the SADCL card beside the model,
      `push_to_hub` uploads the SADCL card (`create_model_card`). `config.json` holds no results.
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
        self.online_prototypes = None
        if self.args.online_prototype_steps > 0:
            config = self.model.config
            self.online_prototypes = OnlinePrototypeCallback(
                config.num_labels, config.hidden_dim, config.prototype_threshold, self.args.online_prototype_steps
            )
            self.add_callback(self.online_prototypes)  # before the EMA update: the EMA follows the new prototypes
        self.ema = None
        if self.args.use_ema:
            self.ema = ModelEmaV3(self.model, decay=self.args.ema_decay, use_warmup=self.args.ema_warmup)
            self.add_callback(EMAUpdateCallback(self.ema))
        self.checkpoint_state = CheckpointStateCallback(self.ema, self.online_prototypes)
        self.add_callback(self.checkpoint_state)
        self.add_callback(WeightSyncCheckCallback())
        self.add_callback(ModelCardCallback())

    # Data: evaluation batches get their own (deterministic) transform.

    @contextlib.contextmanager
    def _eval_collator(self):
        # transformers 5.24 `_get_dataloader` batches every split with `self.data_collator`
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
        else every `world_size`-th example), batched here instead of being re-sharded by accelerate; the Trainer's
        `set_epoch` reaches the stream, which reshuffles each epoch."""
        dataset = self.train_dataset
        if not (isinstance(dataset, datasets.IterableDataset) and self.args.world_size > 1):
            return super().get_train_dataloader()
        return _EpochDataLoader(
            split_dataset_by_node(dataset, rank=self.args.process_index, world_size=self.args.world_size),
            batch_size=self._train_batch_size,  # transformers 5.24: args.train_batch_size or auto_find_batch_size's
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
            for name, value in (outputs.get("loss_terms") or {}).items():
                total = self._component_sums.get(name, torch.zeros((), device=value.device))
                self._component_sums[name] = total + value.detach().float()
            self._component_count += 1
            if self.online_prototypes is not None:
                self.online_prototypes.observe(outputs, inputs["labels"], self.state.global_step)
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
            total_steps = max(num_training_steps, 2)
            # torch divides by each phase's length, (pct_start * total_steps - 1) and total_steps * (1 - pct_start):
            # keep both at least half a step, so that any max_steps >= 1 works.
            pct_start = min(max(self.args.one_cycle_pct_start, 1.5 / total_steps), 1 - 0.5 / total_steps)
            self.lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[group["lr"] for group in optimizer.param_groups],
                total_steps=total_steps,
                pct_start=pct_start,
            )
            # transformers 5.24 `_prepare_for_training` drops a scheduler it made (this flag) when `train()` runs again
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    # EMA evaluation.

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

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """An empty batch (every image unreadable, dropped by the evaluation collator) predicts nothing."""
        labels = inputs.get("labels")
        if labels is not None and len(labels) == 0:
            return None, (None if prediction_loss_only else labels), (None if prediction_loss_only else labels)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Metrics of the raw model (`{prefix}_*`) and, with EMA, of the EMA weights (`{prefix}_ema_*`)."""
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.ema is not None:
            with self.ema_model():
                metrics.update(super().evaluate(eval_dataset, ignore_keys, f"{metric_key_prefix}_ema"))
        return metrics

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """transformers' `train`, which also restores the SADCL state saved with `resume_from_checkpoint`: a complete
        checkpoint folder, or True / "latest" / "true" for the newest complete one in `output_dir`
        ([`resolve_resume_checkpoint`]; an incomplete one is refused). A fresh run refuses an `output_dir` that
        holds checkpoints unless `overwrite_output_dir`, which deletes them. The results a loaded model recorded
        describe weights that training changes: [`ModelCardCallback`] drops them from its card data."""
        resume_from_checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        self._clear_output_dir(resume_from_checkpoint)
        self.checkpoint_state.resume_from = resume_from_checkpoint
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _clear_output_dir(self, resume_from_checkpoint: str | None) -> None:
        """Before training: a resumed run deletes the incomplete checkpoints (interrupted saves); a fresh run refuses
        an `output_dir` holding checkpoints, or deletes them with `overwrite_output_dir`."""
        folders = checkpoint_folders(self.args.output_dir)
        if resume_from_checkpoint is None and folders and not self.args.overwrite_output_dir:
            raise ValueError(
                f"output_dir {self.args.output_dir} holds another run's checkpoints ({folders[0].name}, ...): resume "
                "with --resume_from_checkpoint latest, or pass --overwrite_output_dir to delete them"
            )
        if resume_from_checkpoint is not None:
            folders = [folder for folder in folders if not checkpoint_is_complete(folder)]
        if self.args.should_save and folders:
            logger.warning("deleting checkpoints %s from %s", [folder.name for folder in folders], self.args.output_dir)
            for folder in folders:
                shutil.rmtree(folder)
        self.accelerator.wait_for_everyone()

    def _save_checkpoint(self, model, trial):
        """transformers' checkpoint, crash-consistent: the SADCL state first, then transformers' files, then (after
        every process finished) the completion record; older checkpoints are rotated out only after it."""
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save and os.path.exists(folder):  # left by an interrupted run: never mix files
            shutil.rmtree(folder)
        self.accelerator.wait_for_everyone()
        self.checkpoint_state.save(folder, self.args, model)
        save_total_limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotation comes last
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = save_total_limit
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            mark_checkpoint_complete(folder, self.args.world_size)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

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

        `summary`: the card data's `dataset_name` (the dataset the results were measured on; without it the card
        shows no results), `stage`, `train_split`, `eval_split`, `dataset_id`. With what [`ModelCardCallback`]
        recorded (the latest evaluation of the saved weights, the training arguments) they become the saved model's
        `model_card_data`, written as README.md and `model_card_data.json` for every later card (e.g. `push_to_hub`).
        """
        use_ema = self.ema is not None if use_ema is None else use_ema
        raw = self.accelerator.unwrap_model(self.model)
        model = self.ema.module if use_ema else raw
        card_data = dataclasses.replace(model_card_data_of(raw), uses_ema_weights=use_ema)
        for name, value in summary.items():
            if not hasattr(card_data, name):
                raise TypeError(f"save_final_model got an unexpected card field {name!r}")
            setattr(card_data, name, value if value is not None else getattr(card_data, name))
        if not card_data.dataset_name:
            card_data.metrics, card_data.ema_metrics = {}, {}
        model.model_card_data = card_data
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
        if metrics and not (dataset_name or model_card_data_of(model).dataset_name):
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
            license=license,
            tags=[tags] if isinstance(tags, str) else tags,
        )
