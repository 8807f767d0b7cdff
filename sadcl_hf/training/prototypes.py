# Copyright 2025 The sadcl-hf developers. Licensed under the Apache License, Version 2.0.
"""Class prototypes of SADCL: loading, saving and computing them.

SADCL trains in two stages. After the first stage (SARL trained with ASL only), the prototype of class ``k`` is the
mean raw label-level feature ``label_features[b, k]`` over the training images where class ``k`` is present and
predicted with probability above a threshold (0.85 in the paper); the second stage trains with the dual
contrastive objective against these prototypes. :func:`compute_prototypes` runs that pass over a dataloader,
:func:`compute_dataset_prototypes` over a dataset with the model's evaluation preprocessing, and
:class:`OnlinePrototypeInitializer` accumulates the same means step by step during training.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..losses import confident_positives

__all__ = [
    "OnlinePrototypeInitializer",
    "compute_dataset_prototypes",
    "compute_prototypes",
    "load_prototypes",
    "save_prototypes",
]

logger = logging.getLogger(__name__)

PathLike = str | Path
PROTOTYPE_KEY = "prototypes"


def load_prototypes(path: PathLike, num_labels: int | None = None, hidden_dim: int | None = None) -> torch.Tensor:
    """Loads class prototypes from a `.npy` or `.safetensors` file.

    Args:
        path: a `.npy` file (loaded with `allow_pickle=False`) or a `.safetensors` file holding a single tensor or a
            tensor named `"prototypes"`.
        num_labels: expected number of classes `K` (checked when given).
        hidden_dim: expected feature size `D` (checked when given).

    Returns:
        `[K, D]` float32 prototypes (a stored `[1, K, D]` tensor is squeezed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Prototype file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        prototypes = torch.from_numpy(np.load(path, allow_pickle=False))
    elif suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if PROTOTYPE_KEY in tensors:
            prototypes = tensors[PROTOTYPE_KEY]
        elif len(tensors) == 1:
            prototypes = next(iter(tensors.values()))
        else:
            raise ValueError(
                f"Prototype file {path} holds tensors {sorted(tensors)}; expected a single tensor or one named "
                f"{PROTOTYPE_KEY!r}."
            )
    else:
        raise ValueError(f"Prototype file {path} must end in .npy or .safetensors, got {path.suffix!r}.")

    expected_rows = num_labels if num_labels is not None else "num_labels"
    expected_columns = hidden_dim if hidden_dim is not None else "hidden_dim"
    expected = f"[{expected_rows}, {expected_columns}]"
    if prototypes.dim() == 3 and prototypes.shape[0] == 1:
        prototypes = prototypes[0]
    if (
        prototypes.dim() != 2
        or not prototypes.is_floating_point()
        or (num_labels is not None and prototypes.shape[0] != num_labels)
        or (hidden_dim is not None and prototypes.shape[1] != hidden_dim)
    ):
        raise ValueError(
            f"Prototype file {path} holds a {prototypes.dtype} tensor of shape {list(prototypes.shape)}; expected a "
            f"floating-point tensor of shape {expected} (or [1, *{expected}])."
        )
    return prototypes.to(torch.float32).contiguous()


def save_prototypes(prototypes: torch.Tensor, path: PathLike) -> None:
    """Saves `[K, D]` (or `[1, K, D]`) prototypes as `.npy` or `.safetensors` (key `"prototypes"`), by suffix."""
    path = Path(path)
    if prototypes.dim() == 3 and prototypes.shape[0] == 1:
        prototypes = prototypes[0]
    if prototypes.dim() != 2:
        raise ValueError(f"`prototypes` must have shape [num_labels, hidden_dim], got {list(prototypes.shape)}.")
    prototypes = prototypes.detach().to("cpu", torch.float32).contiguous()
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".safetensors"):
        raise ValueError(f"Prototype file {path} must end in .npy or .safetensors, got {path.suffix!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, prototypes.numpy(), allow_pickle=False)
    else:
        from safetensors.torch import save_file

        save_file({PROTOTYPE_KEY: prototypes}, str(path))


class _RunningClassMean:
    """Per-class running mean of `[B, K, D]` features over the rows selected by a `[B, K]` mask (float64)."""

    def __init__(self, num_labels: int, dim: int) -> None:
        self.num_labels = num_labels
        self.dim = dim
        self.means = torch.zeros(num_labels, dim, dtype=torch.float64)
        self.counts = torch.zeros(num_labels, dtype=torch.long)

    @torch.no_grad()
    def update(self, features: torch.Tensor, mask: torch.Tensor) -> None:
        if self.means.device != features.device:
            self.means = self.means.to(features.device)
            self.counts = self.counts.to(features.device)
        mask = mask.to(torch.float64)
        batch_counts = mask.sum(0)  # [K]
        batch_sums = torch.einsum("bk,bkd->kd", mask, features.to(torch.float64))
        new_counts = self.counts + batch_counts.long()
        self.means += (batch_sums - batch_counts[:, None] * self.means) / new_counts.clamp(min=1)[:, None]
        self.counts = new_counts


def _check_step_inputs(
    label_features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, num_labels: int, dim: int
) -> None:
    batch_size = label_features.shape[0]
    if label_features.dim() != 3 or tuple(label_features.shape[1:]) != (num_labels, dim):
        raise ValueError(
            f"`label_features` must have shape [batch_size, {num_labels}, {dim}], got {list(label_features.shape)}."
        )
    if tuple(logits.shape) != (batch_size, num_labels):
        raise ValueError(f"`logits` must have shape [{batch_size}, {num_labels}], got {list(logits.shape)}.")
    if tuple(labels.shape) != (batch_size, num_labels):
        raise ValueError(f"`labels` must have shape [{batch_size}, {num_labels}], got {list(labels.shape)}.")


class OnlinePrototypeInitializer:
    """Accumulates, step by step, the running mean of the confident positive label features of each class.

    A feature `label_features[b, k]` counts when class `k` is present in image `b` (`labels[b, k] > 0.5`) and
    predicted with `sigmoid(logits[b, k]) > threshold` -- the paper's prototype definition, computed online
    instead of in a separate pass over the training set.

    Args:
        num_labels: number of classes `K`.
        dim: feature size `D`.
        threshold: probability threshold (0.85 in the paper).
    """

    def __init__(self, num_labels: int, dim: int, threshold: float = 0.85) -> None:
        self.num_labels = num_labels
        self.dim = dim
        self.threshold = threshold
        self._confident = _RunningClassMean(num_labels, dim)

    @property
    def counts(self) -> torch.Tensor:
        """`[K]` number of confident positive features seen per class."""
        return self._confident.counts

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The running means `[K, D]` (float64) and counts `[K]`, to resume training."""
        return {"means": self._confident.means, "counts": self._confident.counts}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        means, counts = state["means"], state["counts"]
        if tuple(means.shape) != (self.num_labels, self.dim) or tuple(counts.shape) != (self.num_labels,):
            raise ValueError(
                f"online prototype state of shape {list(means.shape)} / {list(counts.shape)} does not fit "
                f"[{self.num_labels}, {self.dim}] / [{self.num_labels}]"
            )
        self._confident.means = means.to(torch.float64)
        self._confident.counts = counts.to(torch.long)

    @torch.no_grad()
    def update(self, label_features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Adds a batch: `label_features` `[B, K, D]`, `logits` `[B, K]`, `labels` `[B, K]` (multi-hot)."""
        _check_step_inputs(label_features, logits, labels, self.num_labels, self.dim)
        confident = confident_positives(logits, labels, self.threshold)
        self._confident.update(label_features.detach(), confident)

    def prototypes(self, fallback: torch.Tensor) -> torch.Tensor:
        """`[K, D]` running means; classes never seen keep the row of `fallback` (`[K, D]`). Dtype/device of
        `fallback`."""
        if tuple(fallback.shape) != (self.num_labels, self.dim):
            raise ValueError(f"`fallback` must have shape [{self.num_labels}, {self.dim}], got {list(fallback.shape)}.")
        seen = (self.counts > 0).to(fallback.device)[:, None]
        return torch.where(seen, self._confident.means.to(fallback.device, fallback.dtype), fallback.detach())


def _get_output(outputs: Any, name: str) -> torch.Tensor:
    value = outputs.get(name) if isinstance(outputs, Mapping) else getattr(outputs, name, None)
    if value is None:
        raise ValueError(
            f"compute_prototypes: the model output has no `{name}`; the model must return `.logits` [B, K] and "
            "`.label_features` [B, K, D]."
        )
    return value


@torch.no_grad()
def compute_prototypes(
    model: torch.nn.Module,
    dataloader: Iterable[Mapping[str, torch.Tensor]],
    threshold: float = 0.85,
    device: str | torch.device | None = None,
    fallback: torch.Tensor | None = None,
    progress_bar: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Computes the class prototypes of SADCL's second stage.

    The prototype of class `k` is the mean raw label feature `label_features[b, k]` over the images `b` where class
    `k` is present and predicted with probability `sigmoid(logits[b, k]) > threshold`. The model runs in eval mode
    (its previous mode is restored) under `no_grad`.

    Classes with no such image fall back, in order, to the mean over the images where the class is present
    (whatever the confidence), to the row of `fallback` (e.g. the model's current prototypes), or to zeros; a
    warning lists them.

    Args:
        model: called as `model(pixel_values=...)`, returning an object with `.logits` `[B, K]` and
            `.label_features` `[B, K, D]`.
        dataloader: batches (dicts) with `pixel_values` `[B, 3, H, W]` and multi-hot `labels` `[B, K]`.
        threshold: probability threshold (0.85 in the paper).
        device: where to run the model; defaults to the device of its first parameter (CPU without parameters).
        fallback: optional `[K, D]` prototypes for the classes never present.
        progress_bar: show a tqdm progress bar.

    Returns:
        `(prototypes [K, D] float32, counts [K] int64)`, `counts` being the number of confident images per class.
    """
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    confident_means: _RunningClassMean | None = None
    present_means: _RunningClassMean | None = None
    try:
        for step, batch in enumerate(tqdm(dataloader, desc="Computing prototypes", disable=not progress_bar)):
            missing = [key for key in ("pixel_values", "labels") if key not in batch]
            if missing:
                raise KeyError(
                    f"compute_prototypes: batch {step} has no {missing}; expected keys 'pixel_values' and 'labels'."
                )
            if len(batch["labels"]) == 0:  # every image of the batch was unreadable (dropped by the collator)
                continue
            outputs = model(pixel_values=batch["pixel_values"].to(device))
            logits = _get_output(outputs, "logits")
            label_features = _get_output(outputs, "label_features")
            labels = batch["labels"].to(logits.device)
            if confident_means is None:
                num_labels, dim = label_features.shape[1:]
                confident_means = _RunningClassMean(num_labels, dim)
                present_means = _RunningClassMean(num_labels, dim)
            _check_step_inputs(label_features, logits, labels, confident_means.num_labels, confident_means.dim)
            present = labels > 0.5
            confident_means.update(label_features, confident_positives(logits, labels, threshold))
            present_means.update(label_features, present)
    finally:
        model.train(was_training)
    if confident_means is None:
        raise ValueError("compute_prototypes: the dataloader yielded no batch.")

    prototypes = confident_means.means
    counts = confident_means.counts
    if fallback is not None:
        if fallback.dim() == 3 and fallback.shape[0] == 1:
            fallback = fallback[0]
        if tuple(fallback.shape) != tuple(prototypes.shape):
            raise ValueError(f"`fallback` must have shape {list(prototypes.shape)}, got {list(fallback.shape)}.")
        fallback = fallback.detach().to(prototypes.device, prototypes.dtype)
    unseen = counts == 0
    if unseen.any():
        from_present = unseen & (present_means.counts > 0)
        prototypes = torch.where(from_present[:, None], present_means.means, prototypes)
        never_present = unseen & ~from_present
        if fallback is not None:
            prototypes = torch.where(never_present[:, None], fallback, prototypes)
        logger.warning(
            "compute_prototypes: no image with probability > %s for classes %s; using the mean over the images "
            "where the class is present for %s and %s for %s.",
            threshold,
            unseen.nonzero().flatten().tolist(),
            from_present.nonzero().flatten().tolist(),
            "`fallback`" if fallback is not None else "zeros",
            never_present.nonzero().flatten().tolist(),
        )
    return prototypes.to(torch.float32).cpu(), counts.cpu()


def compute_dataset_prototypes(
    model: torch.nn.Module,
    dataset: Any,
    threshold: float | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    progress_bar: bool = True,
    max_unreadable_fraction: float = 0.0,
    unreadable_list: PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[`compute_prototypes`] of a SADCL model over a multi-label dataset (`image` and `labels` columns), its
    images preprocessed by the model's own image processor ([`eval_collator_for_config`]), as in evaluation and
    the pipeline.

    Args:
        model: a `SADCLForImageClassification` (its `config` and current `prototypes` `[K, D]`, the fallback).
        dataset: e.g. the training split of `load_multilabel_dataset(...)`.
        threshold: probability threshold; default `model.config.prototype_threshold` (0.85, the paper's).
        batch_size / num_workers: the `DataLoader`'s.
        progress_bar: show a tqdm progress bar.
        max_unreadable_fraction / unreadable_list: above 0, an unreadable image contributes nothing (warned about,
            listed and counted as in training, [`eval_collator_for_config`]); 0 raises at the first one.

    Returns:
        `(prototypes [K, D] float32, counts [K] int64)` as [`compute_prototypes`].
    """
    from ..image_processing import evaluation_dataloader

    return compute_prototypes(
        model,
        evaluation_dataloader(
            model.config,
            dataset,
            batch_size,
            num_workers,
            max_unreadable_fraction=max_unreadable_fraction,
            unreadable_list=unreadable_list,
        ),
        threshold=model.config.prototype_threshold if threshold is None else threshold,
        fallback=model.prototypes.detach(),
        progress_bar=progress_bar,
    )
