"""Per-class decision thresholds: calibration on a validation split and threshold files.

A multi-label model predicts class k when sigmoid(logit_k) >= t_k ([`sadcl_hf.evaluation.predict_labels`], the rule
the metrics and the pipeline share; a score equal to its threshold is predicted). The paper evaluates
CP/CR/CF1/OP/OR/OF1 at t_k = 0.5; choosing t_k per class to maximise that class's F1 on held-out data usually raises
CF1 and OF1 (mAP is threshold-free and does not change). The thresholds are stored in `config.thresholds`, which the
`multi-label-image-classification` pipeline and `scripts/predict.py` apply. Calibrate on a validation split, never
on the test split whose numbers you report.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..evaluation import (
    DEFAULT_THRESHOLD,
    check_dataset_labels,
    metric_names,
    metric_title,
    multilabel_metrics,
    per_class_f1_thresholds,
    resolve_thresholds,
    sigmoid,
)

__all__ = ["calibrate_thresholds", "format_calibration_report", "load_thresholds", "predict_scores"]


def load_thresholds(path: str | os.PathLike, num_labels: int, label_names: Sequence[str] | None = None) -> list[float]:
    """Reads per-class thresholds from a JSON file.

    The file holds either a list of `num_labels` numbers in class-index order, or an object mapping every label
    name (or class index, as a string) to its threshold, e.g. `{"cat": 0.4, "dog": 0.55}`.

    Raises:
        ValueError: the file is not valid JSON, has the wrong number of classes, names unknown or misses labels,
            or holds a value outside [0, 1]. The message names the file.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"threshold file {path} does not exist") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"threshold file {path} is not valid JSON ({error})") from error

    if isinstance(content, dict):
        index_of = {str(index): index for index in range(num_labels)}
        if label_names is not None:
            if len(label_names) != num_labels:
                raise ValueError(f"got {len(label_names)} label names for {num_labels} labels")
            index_of.update({str(name): index for index, name in enumerate(label_names)})
        values: list[Any] = [None] * num_labels
        unknown = [key for key in content if key not in index_of]
        if unknown:
            raise ValueError(
                f"threshold file {path} names unknown labels {unknown[:10]}; the model's labels are "
                f"{list(label_names) if label_names is not None else list(range(num_labels))}"
            )
        for key, value in content.items():
            values[index_of[key]] = value
        missing = [label_names[i] if label_names is not None else i for i, v in enumerate(values) if v is None]
        if missing:
            raise ValueError(f"threshold file {path} gives no threshold for labels {missing[:10]} (of {num_labels})")
    elif isinstance(content, list):
        if len(content) != num_labels:
            raise ValueError(
                f"threshold file {path} has {len(content)} thresholds but the model has {num_labels} labels"
            )
        values = content
    else:
        raise ValueError(
            f"threshold file {path} must hold a list of {num_labels} numbers or a {{label: threshold}} object, "
            f"got {type(content).__name__}"
        )
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"threshold file {path}: every threshold must be a number in [0, 1], got {value!r}")
    return [float(value) for value in values]


def _check_dataset_labels(dataset, config) -> None:
    """Raises when the dataset's class names (ClassLabel) are not the model's; a dataset without names is not
    checked."""
    from ..data import dataset_label_names

    try:
        dataset_names = dataset_label_names(dataset)
    except ValueError:
        return  # no ClassLabel names to compare with
    check_dataset_labels(dataset_names, config, what="the calibration data")


@torch.no_grad()
def predict_scores(
    model,
    dataset,
    image_processor=None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    show_progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores [N, K] and multi-hot targets [N, K] of a multi-label dataset (`image`, `labels` columns).

    Images are preprocessed by `image_processor` (default: the one saved with every SADCL model,
    [`image_processor_for_config`]; batched by [`evaluation_dataloader`]) and the float32 logits go through the
    pipeline's float64 sigmoid, so the scores are the ones the pipeline would give. The model is moved to `device`
    (default: where it is) and scored in eval mode; its training mode is restored afterwards.
    """
    from tqdm.auto import tqdm

    from ..image_processing import evaluation_dataloader

    loader = evaluation_dataloader(model.config, dataset, batch_size, num_workers, image_processor)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.to(device).eval()
    scores, targets = [], []
    try:
        for batch in tqdm(loader, desc="Scoring", unit="batch", disable=not show_progress):
            logits = model(pixel_values=batch["pixel_values"].to(device, dtype=model.dtype)).logits
            scores.append(sigmoid(logits.float().cpu().numpy().astype(np.float64)))
            targets.append(batch["labels"].numpy())
    finally:
        model.train(was_training)
    if not scores:
        raise ValueError("the calibration dataset is empty")
    return np.concatenate(scores), np.concatenate(targets)


def calibrate_thresholds(
    model,
    dataset,
    image_processor=None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    candidates: Sequence[float] | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Chooses per-class thresholds that maximise each class's F1 on `dataset` and stores them in
    `model.config.thresholds`.

    Args:
        model: a multi-label `AutoModelForImageClassification` (e.g. `SADCLForImageClassification`).
        dataset: a validation split with `image` and `labels` (class ids) columns, e.g.
            `load_multilabel_dataset("coco2014", root, split="val")`. Its ClassLabel names must match `id2label`.
        image_processor: preprocessing (default: [`image_processor_for_config`]`(model.config)`).
        batch_size / num_workers / device: scoring loop settings (device defaults to the model's).
        candidates: thresholds to choose from; `None` tries every score on the data
            (see [`per_class_f1_thresholds`]).
        show_progress: show a progress bar.

    Returns:
        `{"num_images", "thresholds" {label: t}, "thresholds_before" [K], "before" {metric: %}, "after" {metric: %}}`
        where "before" uses the model's previous thresholds (`config.thresholds`, else 0.5) and "after" the new ones.
    """
    config = model.config
    _check_dataset_labels(dataset, config)
    scores, targets = predict_scores(
        model,
        dataset,
        image_processor,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        show_progress=show_progress,
    )
    thresholds_before = resolve_thresholds(None, config)
    thresholds = per_class_f1_thresholds(scores, targets, candidates=candidates, default_threshold=DEFAULT_THRESHOLD)
    before = multilabel_metrics(scores, targets, threshold=thresholds_before)
    after = multilabel_metrics(scores, targets, threshold=thresholds)
    config.thresholds = [float(value) for value in thresholds]
    names = config.label_names
    return {
        "num_images": int(scores.shape[0]),
        "thresholds": dict(zip(names, config.thresholds)),
        "thresholds_before": [float(value) for value in thresholds_before],
        "before": before,
        "after": after,
    }


def format_calibration_report(report: dict[str, Any]) -> str:
    """The before/after metrics of [`calibrate_thresholds`] as a plain-text table (percent)."""
    rows = [f"{'metric':<18}{'before':>10}{'after':>10}{'change':>10}"]
    for key in metric_names(top_k=3):
        if key not in report["before"]:
            continue
        before, after = report["before"][key], report["after"][key]
        rows.append(f"{metric_title(key):<18}{before:>10.2f}{after:>10.2f}{after - before:>+10.2f}")
    return "\n".join(rows)
