"""Multi-label classification metrics as reported in the SADCL paper.

* **mAP** — per class, VOC-style average precision with the precision envelope (all-point interpolation, as in
  the VOC 2010+ devkit and Query2Label's ``voc_ap``), averaged over classes, in percent.
* **CP, CR, CF1, OP, OR, OF1** — per-class (C) and overall (O) precision, recall and F1 at a score threshold
  (0.5 on probabilities), and the same for the top-3 predictions per image (ML-GCN's ``AveragePrecisionMeter``).
* **CF1-mean** (``cf1_mean``) — the mean over classes of per-class F1, the CF1 of the official SADCL/Query2Label
  helper ``overall()``, reported next to ML-GCN's CF1 (which the paper tables print).

All results are in percent. Conventions that the released code leaves open are fixed here and documented where
they apply:

* **Ties in AP.** Samples with equal scores for a class are one block: the precision/recall curve gets one point
  per distinct score (the operating point "predict every sample whose score is >= s"), like
  ``sklearn.metrics.precision_recall_curve``. The result does not depend on the order of the samples and equals
  the released code's result when negatives are ranked ahead of positives inside each tie. Without ties it is
  exactly Query2Label's ``voc_mAP``; with ties the released code's value depends on the (unstable) order that
  ``np.argsort`` happens to give.
* **Classes without positives.** Their AP is undefined: :func:`average_precision` returns NaN there (as the
  released code does) and :func:`mean_average_precision` leaves them out of the mean with a warning.
* **Empty denominators in CP/CR/OP/OR.** Following ML-GCN (``Np[Np == 0] = 1``), a count of 0 in a denominator is
  replaced by 1, so the precision of a class with no predictions is 0; the same guard is applied to the number of
  ground-truth labels (recall of a class without positives is 0) and F1 is 0 when precision + recall is 0.
  Every result is finite.
* **Decision rule.** A label is predicted when ``score >= threshold`` (:data:`THRESHOLD_COMPARISON`, applied by
  :func:`predict_labels`): the metrics here, threshold calibration and the pipeline share it. The official helper
  ``overall()`` uses ``score > threshold``; the two differ only for a score exactly equal to the threshold.
* **Top-k.** As in ML-GCN's ``overall_topk``, a label is predicted in the top-k setting when it is among the
  image's k highest scores *and* its score reaches the threshold. Ties between classes inside an image are broken
  towards the lower class index.
* **CF1** is ML-GCN's ``2 * CP * CR / (CP + CR)`` (the F1 of the mean precision and mean recall); ``cf1_mean`` is
  ``mean_k 2 * P_k * R_k / (P_k + R_k)`` (0 for a class without a true positive), as in the official ``overall()``.
"""

from __future__ import annotations

import numbers
import operator
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLD",
    "METRIC_PATH",
    "MULTI_LABEL_TASK",
    "METRIC_TITLES",
    "MultiLabelMetrics",
    "THRESHOLD_COMPARISON",
    "average_precision",
    "check_dataset_labels",
    "compute_metrics",
    "has_placeholder_label_names",
    "load_metric",
    "mean_average_precision",
    "metric_names",
    "metric_title",
    "multilabel_metrics",
    "per_class_f1_thresholds",
    "predict_labels",
    "resolve_thresholds",
    "sigmoid",
    "split_metric_name",
]

METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "multilabel_map"
"""Directory of the ``evaluate`` metric module (``evaluate.load(str(METRIC_PATH))``)."""

MULTI_LABEL_TASK = "multi-label-image-classification"
"""The transformers task of multi-label tagging: the pipeline's name and the model card's tag."""

DEFAULT_THRESHOLD = 0.5
"""Decision threshold on sigmoid probabilities where none is given or calibrated (the paper's CP ... OF1 use it)."""

THRESHOLD_COMPARISON = operator.ge
"""The decision rule: class k is predicted when ``THRESHOLD_COMPARISON(score_k, threshold_k)``, i.e.
``score >= threshold`` (ML-GCN's evaluation). :func:`predict_labels` applies it for the metrics, threshold calibration
and the pipeline; :func:`per_class_f1_thresholds` returns scores as thresholds, so it relies on the ``>=``."""

METRIC_TITLES = {
    "map": "mAP",
    "cp": "CP",
    "cr": "CR",
    "cf1": "CF1",
    "cf1_mean": "CF1-mean",
    "op": "OP",
    "or": "OR",
    "of1": "OF1",
}
"""Display title of every metric :func:`multilabel_metrics` reports (before any ``_top<k>`` suffix), in report
order: ``map`` is threshold-free, the others count the predicted labels."""

_TOP_K_SUFFIX = re.compile(r"^(?P<base>.+?)_top(?P<k>[1-9][0-9]*)$")


def _to_numpy(array: Any, name: str) -> np.ndarray:
    """Converts a numpy array, torch tensor or nested sequence to a numpy array."""
    if hasattr(array, "detach") and hasattr(array, "cpu"):
        array = array.detach().cpu()
        if array.is_floating_point():
            array = array.double()
        array = array.numpy()
    try:
        return np.asarray(array)
    except (TypeError, ValueError) as error:
        raise TypeError(f"`{name}` must be a numpy array or torch tensor, got {type(array).__name__}") from error


def _check_scores_targets(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validates and converts ``scores`` [N, K] (float64) and same-shape 0/1 ``targets`` (bool)."""
    scores = _to_numpy(scores, "scores")
    targets = _to_numpy(targets, "targets")
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(
            f"`scores` must have shape [N, K] (N >= 1 images, K >= 1 classes), got shape {tuple(scores.shape)}"
        )
    if targets.shape != scores.shape:
        raise ValueError(
            f"`targets` must be 0/1 multi-hot labels with the same shape as `scores` {tuple(scores.shape)}, "
            f"got shape {tuple(targets.shape)}"
        )
    if not (np.issubdtype(scores.dtype, np.number) or scores.dtype == bool):
        raise TypeError(f"`scores` must be numeric, got dtype {scores.dtype}")
    scores = scores.astype(np.float64)
    if np.isnan(scores).any():
        raise ValueError("`scores` contains NaN")
    if not (np.issubdtype(targets.dtype, np.number) or targets.dtype == bool):
        raise TypeError(f"`targets` must be 0/1 multi-hot labels, got dtype {targets.dtype}")
    if not np.isin(targets, (0, 1)).all():
        found = np.unique(targets[~np.isin(targets, (0, 1))])[:5].tolist()
        raise ValueError(f"`targets` must be 0/1 multi-hot labels, found values {found}")
    return scores, targets.astype(bool)


def _check_probabilities(scores: np.ndarray) -> None:
    if scores.min() < 0.0 or scores.max() > 1.0:
        raise ValueError(
            "`scores` must be probabilities in [0, 1] (found values in "
            f"[{scores.min():.4g}, {scores.max():.4g}]); apply a sigmoid to logits first, or use `compute_metrics`"
        )


def _check_threshold(threshold: Any, num_classes: int) -> np.ndarray:
    """Returns ``threshold`` as an array broadcastable against [N, K] scores: a scalar or one value per class."""
    threshold = _to_numpy(threshold, "threshold").astype(np.float64)
    if threshold.ndim == 0:
        return threshold
    if threshold.shape != (num_classes,):
        raise ValueError(
            f"`threshold` must be a scalar or an array of shape [K] = [{num_classes}], got shape {threshold.shape}"
        )
    if np.isnan(threshold).any():
        raise ValueError("`threshold` contains NaN")
    return threshold


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (float64 logits -> probabilities of the same shape)."""
    return np.exp(-np.logaddexp(0.0, -logits))


def predict_labels(scores: np.ndarray, thresholds: float | np.ndarray) -> np.ndarray:
    """Boolean predictions of :data:`THRESHOLD_COMPARISON`: ``scores`` [..., K] against a scalar or [K] thresholds."""
    return THRESHOLD_COMPARISON(scores, thresholds)


def has_placeholder_label_names(config) -> bool:
    """Whether `config.id2label` holds transformers' placeholders `LABEL_0`, `LABEL_1`, ... instead of names."""
    id2label = {int(index): name for index, name in (getattr(config, "id2label", None) or {}).items()}
    return all(id2label.get(index) == f"LABEL_{index}" for index in range(config.num_labels))


def check_dataset_labels(dataset_names: Sequence[str], config, what: str = "the dataset") -> None:
    """Raises a one-line `ValueError` naming `what` unless `dataset_names` [K] (e.g. `sadcl_hf.data.
    dataset_label_names(dataset)`) are the model's label names (`config.label_names`) in the model's class order.
    Placeholder names (`LABEL_i`, a model saved without names) match no dataset."""
    model_names = config.label_names
    model = f"model {config.name_or_path}" if getattr(config, "name_or_path", "") else "model"
    dataset_names = [str(name) for name in dataset_names]
    if len(dataset_names) != len(model_names):
        problem = f"{len(dataset_names)} classes but the {model} has {len(model_names)} labels"
    elif has_placeholder_label_names(config):
        problem = (
            f"the {model} has no label names (id2label holds LABEL_0 ... LABEL_{len(model_names) - 1}); set id2label "
            "in its config.json to the dataset's classes (converter: --dataset or --id2label)"
        )
    elif dataset_names != model_names:
        index = next(i for i, (ours, theirs) in enumerate(zip(dataset_names, model_names)) if ours != theirs)
        order = "the same classes in another order: " if sorted(dataset_names) == sorted(model_names) else ""
        problem = f"{order}class {index} is {dataset_names[index]!r} but the {model}'s is {model_names[index]!r}"
    else:
        return
    raise ValueError(f"{what}: its classes do not match the {model}'s labels (config.id2label): {problem}")


def resolve_thresholds(threshold: float | Sequence[float] | np.ndarray | None, config) -> np.ndarray:
    """The per-class decision thresholds [K] (float64).

    Args:
        threshold: one number for every class, or one value per class; `None` takes `config.thresholds`, else 0.5.
        config: the model config (`num_labels`, `thresholds`).

    Raises:
        ValueError: a value outside [0, 1] or NaN, or a list whose length is not the number of classes.
    """
    num_labels = config.num_labels
    source = "threshold"
    if threshold is None:
        threshold = getattr(config, "thresholds", None)
        source = "config.thresholds"
        if threshold is None:
            return np.full(num_labels, DEFAULT_THRESHOLD)
    if isinstance(threshold, numbers.Real) and not isinstance(threshold, bool):
        values = np.full(num_labels, float(threshold))
    else:
        try:
            values = np.asarray(threshold, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{source} must be a number in [0, 1] or a list of {num_labels} per-class thresholds, got {threshold!r}"
            ) from error
        if values.ndim == 0:
            values = np.full(num_labels, float(values))
        elif values.shape != (num_labels,):
            raise ValueError(
                f"{source} has {values.size} values but the model has {num_labels} labels; give one number or "
                f"exactly {num_labels} per-class thresholds (in class-index order)"
            )
    if np.isnan(values).any() or (values < 0).any() or (values > 1).any():
        raise ValueError(f"{source} must lie in [0, 1] (thresholds on sigmoid probabilities), got {values.tolist()}")
    return values


def split_metric_name(name: str) -> tuple[str, int | None] | None:
    """``"cf1_mean_top3"`` -> ``("cf1_mean", 3)``, ``"map"`` -> ``("map", None)``; ``None`` for an unknown name."""
    match = _TOP_K_SUFFIX.match(name)
    base, top_k = (match["base"], int(match["k"])) if match else (name, None)
    if base not in METRIC_TITLES or (top_k is not None and base == "map"):
        return None
    return base, top_k


def metric_title(name: str) -> str | None:
    """Display title of a :func:`multilabel_metrics` key (``"cf1_top3"`` -> ``"CF1 (top-3)"``); ``None`` if unknown."""
    parts = split_metric_name(name)
    if parts is None:
        return None
    base, top_k = parts
    return METRIC_TITLES[base] + (f" (top-{top_k})" if top_k is not None else "")


def metric_names(top_k: int | None = 3) -> list[str]:
    """The keys :func:`multilabel_metrics` returns for ``top_k``, in report order."""
    thresholded = [name for name in METRIC_TITLES if name != "map"]
    return ["map", *thresholded, *([f"{name}_top{top_k}" for name in thresholded] if top_k is not None else [])]


def _sort_descending(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorts each class (column) by descending score.

    Returns the sorted scores [N, K], sorted targets [N, K] and a mask [N, K] that is True at the last sample of
    each block of equal scores, i.e. at the operating points "predict every sample whose score is >= s".
    """
    order = np.argsort(-scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    sorted_targets = np.take_along_axis(targets, order, axis=0)
    is_block_end = np.ones_like(sorted_targets, dtype=bool)
    is_block_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    return sorted_scores, sorted_targets, is_block_end


def average_precision(scores: Any, targets: Any) -> np.ndarray:
    """Per-class VOC average precision with the precision envelope (all-point interpolation), as a fraction.

    AP_k = sum_j (r_j - r_{j-1}) * max_{j' >= j} p_{j'} over the operating points j of class k, i.e. Query2Label's
    ``voc_ap``. Samples with equal scores form one operating point (see the module docstring), which makes the
    result independent of the sample order.

    Args:
        scores: [N, K] scores of N images for K classes (probabilities or logits: only the ranking matters).
        targets: [N, K] 0/1 multi-hot ground truth.

    Returns:
        [K] float64 array of APs in [0, 1]; NaN for classes without a positive in ``targets``.
    """
    scores, targets = _check_scores_targets(scores, targets)
    _, sorted_targets, is_block_end = _sort_descending(scores, targets)
    true_positives = np.cumsum(sorted_targets, axis=0)
    num_predicted = np.arange(1, scores.shape[0] + 1, dtype=np.float64)[:, None]
    precision = np.where(is_block_end, true_positives / num_predicted, 0.0)
    # Envelope: the precision used for a sample is the best precision at its own or any later operating point.
    envelope = np.flip(np.maximum.accumulate(np.flip(precision, axis=0), axis=0), axis=0)
    num_positives = sorted_targets.sum(axis=0)
    # Each positive raises recall by 1 / num_positives at its block's operating point.
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (envelope * sorted_targets).sum(axis=0) / num_positives
    return np.where(num_positives > 0, ap, np.nan)


def mean_average_precision(scores: Any, targets: Any) -> float:
    """mAP in percent: the mean of :func:`average_precision` over the classes that have a positive.

    Classes without a positive in ``targets`` are left out of the mean with a ``UserWarning`` (the released code
    returns NaN there). Returns NaN, with a warning, when no class has a positive.
    """
    per_class_ap = average_precision(scores, targets)
    undefined = np.flatnonzero(np.isnan(per_class_ap))
    if undefined.size == per_class_ap.size:
        warnings.warn("mAP is undefined: no class has a positive label in `targets`", UserWarning, stacklevel=2)
        return float("nan")
    if undefined.size:
        shown = ", ".join(str(index) for index in undefined[:20]) + (", ..." if undefined.size > 20 else "")
        warnings.warn(
            f"{undefined.size} of {per_class_ap.size} classes have no positive label and are left out of the mAP "
            f"(class indices: {shown})",
            UserWarning,
            stacklevel=2,
        )
    return float(np.nanmean(per_class_ap) * 100.0)


def _precision_recall_f1(predicted: np.ndarray, targets: np.ndarray, suffix: str = "") -> dict[str, float]:
    """CP, CR, CF1, CF1-mean, OP, OR, OF1 (percent) of boolean ``predicted`` [N, K] against boolean ``targets``."""
    num_correct = (predicted & targets).sum(axis=0).astype(np.float64)
    num_predicted = predicted.sum(axis=0).astype(np.float64)
    num_ground_truth = targets.sum(axis=0).astype(np.float64)

    def f1(precision: float, recall: float) -> float:
        return 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0

    class_precision = num_correct / np.maximum(num_predicted, 1.0)
    class_recall = num_correct / np.maximum(num_ground_truth, 1.0)
    per_class_precision = float(np.mean(class_precision))
    per_class_recall = float(np.mean(class_recall))
    overall_precision = float(num_correct.sum() / max(num_predicted.sum(), 1.0))
    overall_recall = float(num_correct.sum() / max(num_ground_truth.sum(), 1.0))
    values = {
        "cp": per_class_precision,
        "cr": per_class_recall,
        "cf1": f1(per_class_precision, per_class_recall),
        "cf1_mean": float(np.mean([f1(p, r) for p, r in zip(class_precision, class_recall)])),
        "op": overall_precision,
        "or": overall_recall,
        "of1": f1(overall_precision, overall_recall),
    }
    return {f"{name}{suffix}": value * 100.0 for name, value in values.items()}


def multilabel_metrics(
    scores: Any,
    targets: Any,
    threshold: float | Sequence[float] | np.ndarray = DEFAULT_THRESHOLD,
    top_k: int | None = 3,
) -> dict[str, float]:
    """All SADCL evaluation metrics, in percent.

    Args:
        scores: [N, K] probabilities (after the sigmoid).
        targets: [N, K] 0/1 multi-hot ground truth.
        threshold: a label is predicted when its probability is ``>= threshold`` (:func:`predict_labels`); a scalar
            or one value per class ([K]).
        top_k: also report the metrics for the top-k predictions per image (labels among the image's ``top_k``
            highest scores that also reach the threshold), under the names ``<metric>_top<k>``; ``None`` skips them.

    Returns:
        The keys of :func:`metric_names` for ``top_k``: ``map, cp, cr, cf1, cf1_mean, op, or, of1`` and, for
        ``top_k=3``, ``cp_top3`` ... ``of1_top3``. See the module docstring for the CF1 definitions, ties, classes
        without positives and empty denominators.
    """
    scores, targets = _check_scores_targets(scores, targets)
    _check_probabilities(scores)
    threshold = _check_threshold(threshold, scores.shape[1])
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"`top_k` must be a positive integer or None, got {top_k!r}")

    results = {"map": mean_average_precision(scores, targets)}
    predicted = predict_labels(scores, threshold)
    results.update(_precision_recall_f1(predicted, targets))
    if top_k is not None:
        top_indices = np.argsort(-scores, axis=1, kind="stable")[:, : min(int(top_k), scores.shape[1])]
        in_top_k = np.zeros_like(predicted)
        np.put_along_axis(in_top_k, top_indices, True, axis=1)
        results.update(_precision_recall_f1(predicted & in_top_k, targets, suffix=f"_top{int(top_k)}"))
    return results


def per_class_f1_thresholds(
    scores: Any,
    targets: Any,
    candidates: Sequence[float] | np.ndarray | None = None,
    default_threshold: float = DEFAULT_THRESHOLD,
) -> np.ndarray:
    """Per class, the threshold that maximises the class's F1 on the given data (for threshold calibration).

    A class predicts the samples whose score is ``>= threshold`` (:func:`predict_labels`), so
    F1 = 2 TP / (#predicted + #positives).

    Args:
        scores: [N, K] scores (probabilities, to be used with :func:`multilabel_metrics`).
        targets: [N, K] 0/1 multi-hot ground truth.
        candidates: thresholds to choose from (1-D). ``None`` uses each class's distinct scores, i.e. every
            operating point on the data.
        default_threshold: returned for classes without a positive and for classes whose best F1 is 0 (no
            candidate predicts any positive).

    Returns:
        [K] float64 thresholds. When several thresholds reach the best F1, the highest one (fewest predictions)
        is returned. Applied with :func:`predict_labels`, they reproduce each class's best F1 on this data.
    """
    scores, targets = _check_scores_targets(scores, targets)
    num_samples, num_classes = scores.shape
    num_positives = targets.sum(axis=0)
    sorted_scores, sorted_targets, is_block_end = _sort_descending(scores, targets)
    true_positives = np.cumsum(sorted_targets, axis=0)

    if candidates is None:
        num_predicted = np.arange(1, num_samples + 1, dtype=np.float64)[:, None]
        f1 = np.where(is_block_end, 2.0 * true_positives / (num_predicted + num_positives), -1.0)
        best = np.argmax(f1, axis=0)  # first maximum in descending score order = highest threshold
        best_f1 = f1[best, np.arange(num_classes)]
        thresholds = sorted_scores[best, np.arange(num_classes)]
    else:
        candidates = _to_numpy(candidates, "candidates").astype(np.float64)
        if candidates.ndim != 1 or candidates.size == 0 or np.isnan(candidates).any():
            raise ValueError(f"`candidates` must be a non-empty 1-D array of thresholds, got shape {candidates.shape}")
        candidates = np.sort(candidates)[::-1]
        true_positives = np.concatenate([np.zeros((1, num_classes)), true_positives], axis=0)
        f1 = np.empty((candidates.size, num_classes))
        for class_index in range(num_classes):
            # Number of samples with score >= candidate, from the ascending sequence of negated sorted scores.
            num_predicted = np.searchsorted(-sorted_scores[:, class_index], -candidates, side="right")
            f1[:, class_index] = (
                2.0 * true_positives[num_predicted, class_index] / (num_predicted + num_positives[class_index])
            )
        best = np.argmax(np.nan_to_num(f1, nan=0.0), axis=0)
        best_f1 = np.nan_to_num(f1[best, np.arange(num_classes)], nan=0.0)
        thresholds = candidates[best]

    return np.where((num_positives > 0) & (best_f1 > 0), thresholds, float(default_threshold))


def _unpack_eval_prediction(eval_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """Returns (logits [N, K], label_ids [N, K]) from an ``EvalPrediction`` or a (predictions, label_ids) pair."""
    if hasattr(eval_pred, "predictions") and hasattr(eval_pred, "label_ids"):
        predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
    elif isinstance(eval_pred, (tuple, list)) and len(eval_pred) == 2:
        predictions, label_ids = eval_pred
    else:
        raise TypeError(
            "expected a transformers.EvalPrediction (or a (predictions, label_ids) pair), "
            f"got {type(eval_pred).__name__}"
        )
    if isinstance(predictions, (tuple, list)):
        if len(predictions) == 0:
            raise ValueError("`eval_pred.predictions` is an empty tuple; expected logits [N, K] as its first element")
        predictions = predictions[0]
    if label_ids is None:
        raise ValueError("`eval_pred.label_ids` is None: the evaluation dataset must provide multi-hot `labels`")
    return _to_numpy(predictions, "eval_pred.predictions"), _to_numpy(label_ids, "eval_pred.label_ids")


class MultiLabelMetrics:
    """``compute_metrics`` callable for ``transformers.Trainer`` with a custom threshold.

    Args:
        threshold: probability threshold, a scalar or one value per class ([K], e.g. from
            :func:`per_class_f1_thresholds`).
        top_k: see :func:`multilabel_metrics`.

    Calling it with an ``EvalPrediction`` whose ``predictions`` are logits [N, K] (or a tuple whose first element
    is the logits) and whose ``label_ids`` are multi-hot [N, K] applies a sigmoid and returns
    :func:`multilabel_metrics`.
    """

    def __init__(self, threshold: float | Sequence[float] | np.ndarray = DEFAULT_THRESHOLD, top_k: int | None = 3):
        threshold = _to_numpy(threshold, "threshold").astype(np.float64)
        if threshold.ndim > 1 or np.isnan(threshold).any():
            raise ValueError(
                f"`threshold` must be a scalar or a 1-D array [K] without NaN, got shape {threshold.shape}"
            )
        self.threshold = threshold
        self.top_k = top_k

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        logits, label_ids = _unpack_eval_prediction(eval_pred)
        if logits.ndim != 2:
            raise ValueError(f"`eval_pred.predictions` must be logits of shape [N, K], got shape {tuple(logits.shape)}")
        probabilities = sigmoid(logits.astype(np.float64))
        return multilabel_metrics(probabilities, label_ids, threshold=self.threshold, top_k=self.top_k)

    def __repr__(self) -> str:
        threshold = float(self.threshold) if self.threshold.ndim == 0 else f"array of {self.threshold.size}"
        return f"{type(self).__name__}(threshold={threshold}, top_k={self.top_k})"


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    """``transformers.Trainer(compute_metrics=compute_metrics)``: all metrics at threshold 0.5 and top-3, in percent.

    ``eval_pred.predictions`` are logits [N, K] (or a tuple whose first element is the logits);
    ``eval_pred.label_ids`` are multi-hot [N, K].
    """
    return MultiLabelMetrics()(eval_pred)


def load_metric(**kwargs: Any):
    """Loads the packaged ``evaluate`` metric (works offline): ``evaluate.load(str(METRIC_PATH), **kwargs)``."""
    import evaluate

    return evaluate.load(str(METRIC_PATH), **kwargs)
