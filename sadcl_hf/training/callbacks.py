"""The `TrainerCallback`s `SADCLTrainer` adds, one job each: the EMA of the weights, the online prototypes of stage
"single", the SADCL state kept next to each checkpoint (memory bank, EMA, online prototypes) and the check that all
processes end with the same weights.

Checkpoint files (written by `SADCLTrainer._save_checkpoint` through [`CheckpointStateCallback.save`] before
transformers' own files): `ema.safetensors` (the main process), and per process
[`process_file_name`]`("memory_bank", i)` and, during the online phase, [`process_file_name`]`("online_prototypes",
i)`. Each is written atomically (a temporary file, fsync, `os.replace`). The main process writes
`CHECKPOINT_COMPLETE_NAME` last, after every process finished and every file is fsynced: a checkpoint without it (a
save interrupted at any instant) is incomplete, and resuming from it is refused ([`resolve_resume_checkpoint`]).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel, gather, reduce
from safetensors.torch import load_file
from safetensors.torch import save as serialize_tensors
from timm.utils.model_ema import ModelEmaV3
from transformers import TrainerCallback

from ..model_card import model_card_data_of
from .prototypes import OnlinePrototypeInitializer

__all__ = [
    "CHECKPOINT_COMPLETE_NAME",
    "EMA_WEIGHTS_NAME",
    "CheckpointStateCallback",
    "EMAUpdateCallback",
    "ModelCardCallback",
    "OnlinePrototypeCallback",
    "WeightSyncCheckCallback",
    "checkpoint_folders",
    "checkpoint_is_complete",
    "mark_checkpoint_complete",
    "newest_complete_checkpoint",
    "process_file_name",
    "resolve_resume_checkpoint",
]

logger = logging.getLogger(__name__)

EMA_WEIGHTS_NAME = "ema.safetensors"
CHECKPOINT_COMPLETE_NAME = "checkpoint_complete.json"
RESUME_LATEST = ("latest", "true")  # `--resume_from_checkpoint` values meaning the newest complete checkpoint
_CHECKPOINT_FOLDER = re.compile(r"^checkpoint-(\d+)$")


def process_file_name(name: str, process_index: int) -> str:
    """The checkpoint file of one process's own state, e.g. `memory_bank-rank0.safetensors`."""
    return f"{name}-rank{process_index}.safetensors"


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_atomically(path: Path, data: bytes) -> None:
    """Writes `path` so that it is either absent/old or complete: a temporary file, fsync, `os.replace`."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tensors = {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
    _write_atomically(path, serialize_tensors(tensors))


def mark_checkpoint_complete(folder: str | os.PathLike, world_size: int) -> None:
    """Main process, after every process wrote its files: fsyncs them and writes `CHECKPOINT_COMPLETE_NAME` (the
    number of processes, each file's size) last."""
    folder = Path(folder)
    files = {path.name: path.stat().st_size for path in sorted(folder.iterdir()) if path.is_file()}
    for name in files:
        _fsync(folder / name)
    record = {"world_size": world_size, "files": files}
    _write_atomically(folder / CHECKPOINT_COMPLETE_NAME, json.dumps(record, indent=1).encode())
    _fsync(folder)


def _completion_record(folder: Path) -> dict | None:
    """The checkpoint's completion record when every file it lists is there with its size, else None."""
    try:
        record = json.loads((folder / CHECKPOINT_COMPLETE_NAME).read_text())
        files = record["files"]
        if all((folder / name).stat().st_size == size for name, size in files.items()):
            return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def checkpoint_is_complete(folder: str | os.PathLike) -> bool:
    """Whether the save of `folder` finished (its completion record is there and every file it lists is intact)."""
    return _completion_record(Path(folder)) is not None


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-{step}` folders of `output_dir`, newest (highest step) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    folders = [path for path in output_dir.iterdir() if _CHECKPOINT_FOLDER.match(path.name) and path.is_dir()]
    return sorted(folders, key=lambda path: int(_CHECKPOINT_FOLDER.match(path.name).group(1)), reverse=True)


def newest_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step in `output_dir` (`get_last_checkpoint` skipping incomplete
    ones), or None."""
    return next((folder for folder in checkpoint_folders(output_dir) if checkpoint_is_complete(folder)), None)


def resolve_resume_checkpoint(resume_from_checkpoint: str | os.PathLike | bool | None, output_dir) -> str | None:
    """The checkpoint folder to resume from: None for a fresh run (None/False), the newest complete one in
    `output_dir` for True, "latest" or "true", else the given folder, which must be complete. Raises a one-line
    `ValueError` naming the newest complete checkpoint otherwise."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    newest = newest_complete_checkpoint(output_dir)
    if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() in RESUME_LATEST:
        if newest is None:
            raise ValueError(f"resume_from_checkpoint: no complete checkpoint in {output_dir}")
        return str(newest)
    folder = Path(resume_from_checkpoint)
    if not checkpoint_is_complete(folder):
        problem = f"incomplete (no intact {CHECKPOINT_COMPLETE_NAME}: its save was interrupted)"
        problem = problem if folder.is_dir() else "no such folder"
        hint = f"the newest complete one in {output_dir} is {newest}" if newest else f"{output_dir} has no complete one"
        raise ValueError(f"resume_from_checkpoint {folder}: {problem}; {hint}")
    return str(folder)


class EMAUpdateCallback(TrainerCallback):
    """Updates the EMA (timm `ModelEmaV3`) after each optimizer step (not each micro-batch)."""

    def __init__(self, ema: ModelEmaV3):
        self.ema = ema

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update(extract_model_from_parallel(model), step=state.global_step)


class ModelCardCallback(TrainerCallback):
    """Fills the trained model's card data (`model.model_card_data`, `sadcl_hf.model_card.SADCLModelCardData`), as
    setfit's and span-marker's `ModelCardCallback`: on train begin it forgets the results of earlier weights and
    records the hyper-parameters and the EMA decay, on each evaluation the metrics of the raw weights (`eval_*`) and
    of the EMA (`eval_ema_*`), on train end the steps taken. `SADCLTrainer.save_final_model` adds dataset, splits and
    stage."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        card_data = model_card_data_of(extract_model_from_parallel(model))
        card_data.reset_results()
        card_data.record_hyperparameters(args)
        card_data.ema_decay = args.ema_decay if getattr(args, "use_ema", False) else None

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        card_data = model_card_data_of(extract_model_from_parallel(model))
        metrics = metrics or {}
        if "eval_ema_loss" in metrics:
            card_data.record_metrics({k: v for k, v in metrics.items() if k.startswith("eval_ema_")}, ema=True)
        if "eval_loss" in metrics:
            card_data.record_metrics({k: v for k, v in metrics.items() if not k.startswith("eval_ema_")})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model_card_data_of(extract_model_from_parallel(model)).global_step = state.global_step


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
    weights and the online prototype means. [`save`] writes them into a new checkpoint (called by
    `SADCLTrainer._save_checkpoint`), `on_train_begin` restores them from `resume_from` (set by `SADCLTrainer.train`),
    and with `load_best_model_at_end` `on_train_end` brings back the best checkpoint's EMA with its weights.

    Resuming on another number of processes `W` than the `S` that saved: memory banks hold recent confident positive
    label features, valid on any process, so process `r` takes the bank of saved process `r % S` (2 -> 1: process 0's
    bank, process 1's is dropped; 1 -> 2: both start from process 0's). The online prototype sums are exact: process
    `r` takes the merged state of the saved processes `s` with `s % W == r` (the sum over processes is unchanged).
    """

    def __init__(self, ema: ModelEmaV3 | None = None, online_prototypes: OnlinePrototypeCallback | None = None):
        self.ema = ema
        self.online_prototypes = online_prototypes
        self.resume_from: str | os.PathLike | None = None

    def save(self, folder: str | os.PathLike, args, model) -> None:
        """Writes this process's SADCL state into the checkpoint `folder` (each file atomically)."""
        folder = Path(folder)
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
        record = _completion_record(folder)
        saved_world_size = record["world_size"] if record else args.world_size
        if saved_world_size != args.world_size and args.process_index == 0:
            logger.warning(
                "%s was saved by %d processes, resumed on %d: process r takes the memory bank of saved process "
                "r %% %d; online prototype sums are merged",
                folder, saved_world_size, args.world_size, saved_world_size,
            )  # fmt: skip
        bank_file = folder / process_file_name("memory_bank", args.process_index % saved_world_size)
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
        if self.online_prototypes is not None and self.online_prototypes.active:
            self._load_online_prototypes(folder, saved_world_size, args)

    def _load_online_prototypes(self, folder: Path, saved_world_size: int, args) -> None:
        """This process's online prototype state: the merged running means of the saved processes `s` with
        `s % world_size == process_index` (none: it starts empty)."""
        states = [
            load_file(path)
            for saved in range(args.process_index, saved_world_size, args.world_size)
            if (path := folder / process_file_name("online_prototypes", saved)).is_file()
        ]
        if len(states) == 1:  # the same number of processes: exactly as saved
            self.online_prototypes.initializer.load_state_dict(states[0])
            return
        if not states:
            return
        counts = torch.stack([state["counts"].to(torch.long) for state in states]).sum(0)
        sums = torch.stack([state["means"].double() * state["counts"].double()[:, None] for state in states]).sum(0)
        means = sums / counts.clamp(min=1).double()[:, None]
        means = torch.where(counts[:, None] > 0, means, states[0]["means"].double())
        self.online_prototypes.initializer.load_state_dict({"means": means, "counts": counts})

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
