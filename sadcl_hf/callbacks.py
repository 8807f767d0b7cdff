"""The `TrainerCallback`s `SADCLTrainer` adds, one job each: the EMA of the weights, the online prototypes of stage
"single", the SADCL state kept next to each checkpoint (memory bank, EMA, online prototypes) and the check that all
processes end with the same weights.

Checkpoint files (transformers 5.24 calls `on_save` after it wrote `checkpoint-{global_step}` under
`args.output_dir`): `ema.safetensors` (the main process), and per process [`process_file_name`]`("memory_bank", i)`
and, during the online phase, [`process_file_name`]`("online_prototypes", i)`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel, gather, reduce
from safetensors.torch import load_file, save_file
from timm.utils.model_ema import ModelEmaV3
from transformers import TrainerCallback

from .prototypes import OnlinePrototypeInitializer

__all__ = [
    "EMA_WEIGHTS_NAME",
    "CheckpointStateCallback",
    "EMAUpdateCallback",
    "OnlinePrototypeCallback",
    "WeightSyncCheckCallback",
    "process_file_name",
]

logger = logging.getLogger(__name__)

EMA_WEIGHTS_NAME = "ema.safetensors"


def process_file_name(name: str, process_index: int) -> str:
    """The checkpoint file of one process's own state, e.g. `memory_bank-rank0.safetensors`."""
    return f"{name}-rank{process_index}.safetensors"


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({key: value.detach().contiguous().cpu() for key, value in tensors.items()}, path)


class EMAUpdateCallback(TrainerCallback):
    """Updates the EMA (timm `ModelEmaV3`) after each optimizer step (not each micro-batch)."""

    def __init__(self, ema: ModelEmaV3):
        self.ema = ema

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update(extract_model_from_parallel(model), step=state.global_step)


class OnlinePrototypeCallback(TrainerCallback):
    """Stage "single": for the first `num_steps` optimizer steps the prototypes `[K, D]` are the running means of
    the confident positive label features seen so far (summed over processes), then they train through PSCL.

    The trainer passes each training micro-batch's outputs to [`observe`]; `on_step_end` writes the means into the
    model and empties its memory bank (its rows were the previous prototypes).
    """

    def __init__(self, num_labels: int, hidden_dim: int, threshold: float, num_steps: int):
        self.num_steps = num_steps
        self.initializer: OnlinePrototypeInitializer | None = OnlinePrototypeInitializer(
            num_labels, hidden_dim, threshold=threshold
        )

    @property
    def active(self) -> bool:
        """Whether the online phase is still running."""
        return self.initializer is not None

    def observe(self, outputs, labels: torch.Tensor, global_step: int) -> None:
        """Adds a micro-batch: `outputs.label_features` `[B, K, D]`, `outputs.logits` `[B, K]`, `labels` `[B, K]`."""
        if self.active and global_step < self.num_steps:
            self.initializer.update(outputs.label_features, outputs.logits, labels)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step >= self.num_steps:  # resumed after the online phase
            self.initializer = None

    @torch.no_grad()
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self.active:
            return
        model = extract_model_from_parallel(model)
        counts = self.initializer.counts.to(model.prototypes.device).float()
        means = self.initializer.prototypes(torch.zeros_like(model.prototypes)).to(model.prototypes.device)
        sums = reduce(means * counts[:, None], reduction="sum")
        counts = reduce(counts, reduction="sum")
        seen = counts > 0
        model.prototypes[seen] = (sums[seen] / counts[seen, None]).to(model.prototypes.dtype)
        model.reset_memory_bank(model.memory_bank.shape[0])
        if state.global_step >= self.num_steps:
            unseen = [model.config.id2label[i] for i in torch.nonzero(~seen).flatten().tolist()]
            if unseen:
                logger.warning("online prototypes: no confident positive seen for %s; they keep their init", unseen)
            self.initializer = None


class CheckpointStateCallback(TrainerCallback):
    """Keeps the state transformers' checkpoints do not hold next to them: each process's memory bank, the EMA
    weights and the online prototype means. `on_save` writes them into the new checkpoint, `on_train_begin` restores
    them from `resume_from` (set by `SADCLTrainer.train`), and with `load_best_model_at_end` `on_train_end` brings
    back the best checkpoint's EMA with its weights."""

    def __init__(self, ema: ModelEmaV3 | None = None, online_prototypes: OnlinePrototypeCallback | None = None):
        self.ema = ema
        self.online_prototypes = online_prototypes
        self.resume_from: str | os.PathLike | None = None

    def on_save(self, args, state, control, model=None, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        model = extract_model_from_parallel(model)
        _save_tensors({"memory_bank": model.memory_bank}, folder / process_file_name("memory_bank", args.process_index))
        if self.ema is not None and args.should_save:
            _save_tensors(self.ema.module.state_dict(), folder / EMA_WEIGHTS_NAME)
        if self.online_prototypes is not None and self.online_prototypes.active:
            state_file = folder / process_file_name("online_prototypes", args.process_index)
            _save_tensors(self.online_prototypes.initializer.state_dict(), state_file)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.resume_from is None:
            return
        folder = Path(self.resume_from)
        model = extract_model_from_parallel(model)
        bank_file = folder / process_file_name("memory_bank", args.process_index)
        if bank_file.is_file():
            model.memory_bank = load_file(bank_file)["memory_bank"].to(model.prototypes.device)
        else:
            logger.warning("%s: no memory bank saved; it restarts from the prototypes", folder)
        if self.ema is not None:
            if (folder / EMA_WEIGHTS_NAME).is_file():
                self._load_ema(folder)
            else:
                logger.warning("%s: no EMA weights saved; the EMA restarts from the current weights", folder)
                self.ema.set(model)
        online_file = folder / process_file_name("online_prototypes", args.process_index)
        if self.online_prototypes is not None and self.online_prototypes.active and online_file.is_file():
            self.online_prototypes.initializer.load_state_dict(load_file(online_file))

    def on_train_end(self, args, state, control, **kwargs):
        # transformers 5.24 `_finalize_training` has loaded `state.best_model_checkpoint`'s weights just before.
        best = state.best_model_checkpoint
        if self.ema is not None and args.load_best_model_at_end and best and (Path(best) / EMA_WEIGHTS_NAME).is_file():
            self._load_ema(Path(best))

    def _load_ema(self, folder: Path) -> None:
        device = str(next(self.ema.module.parameters()).device)
        self.ema.module.load_state_dict(load_file(folder / EMA_WEIGHTS_NAME, device=device))


class WeightSyncCheckCallback(TrainerCallback):
    """With several processes, checks at the end of training that every one holds the same weights (a checksum)."""

    @torch.no_grad()
    def on_train_end(self, args, state, control, model=None, **kwargs):
        if args.world_size <= 1:
            return
        model = extract_model_from_parallel(model)
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
        checksums = gather(checksum.to(args.device)).cpu()
        if not torch.allclose(checksums, checksums[0].expand_as(checksums), rtol=1e-9, atol=0.0):
            raise RuntimeError(f"processes ended training with different weights (checksums {checksums.tolist()})")
        logger.info("weights identical on all %d processes after training", args.world_size)
