"""Tests of sadcl_hf.evaluation and the packaged `evaluate` metric against independent computations."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_recall_curve
from transformers import EvalPrediction

from sadcl_hf.evaluation import (
    DEFAULT_THRESHOLD,
    METRIC_PATH,
    MultiLabelMetrics,
    average_precision,
    compute_metrics,
    mean_average_precision,
    metric_names,
    metric_title,
    multilabel_metrics,
    per_class_f1_thresholds,
    predict_labels,
    sigmoid,
)

METRIC_NAMES = ["map", "cp", "cr", "cf1", "cf1_mean", "op", "or", "of1"] + [
    f"{name}_top3" for name in ["cp", "cr", "cf1", "cf1_mean", "op", "or", "of1"]
]


def _random_problem(seed, num_samples=120, num_classes=7, decimals=None):
    """Scores correlated with multi-hot targets; every class has positives and negatives."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((num_samples, num_classes)) < 0.3).astype(np.int64)
    targets[0], targets[1] = 1, 0
    scores = 1.0 / (1.0 + np.exp(-(1.5 * targets + rng.normal(size=targets.shape) - 0.8)))
    if decimals is not None:
        scores = np.round(scores, decimals)
    return scores, targets


def _sklearn_interpolated_ap(scores, targets):
    """VOC all-point interpolated AP per class, from sklearn's precision/recall operating points."""
    aps = []
    for class_index in range(scores.shape[1]):
        precision, recall, _ = precision_recall_curve(targets[:, class_index], scores[:, class_index])
        # Points run from the lowest threshold (highest recall) to the (recall 0, precision 1) end point; the
        # interpolated precision at a point is the best precision at any point with at least its recall.
        interpolated = np.maximum.accumulate(precision)
        aps.append(np.sum((recall[:-1] - recall[1:]) * interpolated[:-1]))
    return np.array(aps)


def _query2label_voc_ap(scores, targets, order=None):
    """Literal port of Query2Label's ``voc_mAP`` inner loop (per-sample operating points); fraction per class."""
    aps = []
    for class_index in range(scores.shape[1]):
        sorted_indices = np.argsort(-scores[:, class_index]) if order is None else order[:, class_index]
        sorted_labels = targets[sorted_indices, class_index]
        tp = np.cumsum(sorted_labels > 0).astype(float)
        fp = np.cumsum(sorted_labels <= 0).astype(float)
        rec = tp / tp[-1]
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = max(mpre[i - 1], mpre[i])
        changes = np.where(mrec[1:] != mrec[:-1])[0]
        aps.append(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))
    return np.array(aps)


def _ml_gcn_metrics(scores, targets, threshold, top_k):
    """Literal port of ML-GCN's AveragePrecisionMeter.overall / overall_topk / evaluation, in percent."""

    def evaluation(predicted):
        num_classes = predicted.shape[1]
        nc, np_, ng = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
        for k in range(num_classes):
            ng[k] = np.sum(targets[:, k] == 1)
            np_[k] = np.sum(predicted[:, k])
            nc[k] = np.sum(targets[:, k] * predicted[:, k])
        np_[np_ == 0] = 1
        op, orec = np.sum(nc) / np.sum(np_), np.sum(nc) / np.sum(ng)
        cp, cr = np.sum(nc / np_) / num_classes, np.sum(nc / ng) / num_classes
        return [100 * v for v in (cp, cr, 2 * cp * cr / (cp + cr), op, orec, 2 * op * orec / (op + orec))]

    scores_tensor = torch.from_numpy(scores)
    top_indices = scores_tensor.topk(top_k, 1, True, True)[1].numpy()
    predicted_top_k = np.zeros(scores.shape, dtype=bool)
    for i in range(scores.shape[0]):
        for index in top_indices[i]:
            predicted_top_k[i, index] = scores[i, index] >= threshold
    names = ["cp", "cr", "cf1", "op", "or", "of1"]
    results = dict(zip(names, evaluation(scores >= threshold)))
    results.update(zip([f"{name}_top{top_k}" for name in names], evaluation(predicted_top_k)))
    return results


def _official_overall(scores, targets, threshold, top_k=None):
    """The official SADCL/Query2Label ``overall()`` / ``overall_topk()`` definitions, class by class: strict
    ``score > threshold`` (after zeroing all but each image's top-k scores), per-class P, R and F1 set to 0 for a
    class without a true positive, CP/CR/CF1 their means over classes; percent."""
    scores = scores.copy()
    if top_k is not None:
        for row in scores:
            row[np.argsort(-row, kind="stable")[top_k:]] = 0.0
    predicted = scores > threshold
    precisions, recalls, f1s = [], [], []
    for k in range(scores.shape[1]):
        tp = np.sum(predicted[:, k] & (targets[:, k] == 1))
        fp = np.sum(predicted[:, k] & (targets[:, k] == 0))
        fn = np.sum(~predicted[:, k] & (targets[:, k] == 1))
        p, r = (tp / (tp + fp), tp / (tp + fn)) if tp > 0 else (0.0, 0.0)
        precisions.append(100 * p)
        recalls.append(100 * r)
        f1s.append(2 * 100 * p * r / (p + r) if tp > 0 else 0.0)
    return {"cp": np.mean(precisions), "cr": np.mean(recalls), "cf1_mean": np.mean(f1s)}


# --- average precision -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_average_precision_matches_sklearn_interpolated_and_query2label_on_continuous_scores(seed):
    scores, targets = _random_problem(seed)
    ap = average_precision(scores, targets)
    np.testing.assert_allclose(ap, _sklearn_interpolated_ap(scores, targets), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ap, _query2label_voc_ap(scores, targets), rtol=0, atol=1e-12)
    assert mean_average_precision(scores, targets) == pytest.approx(100 * ap.mean(), abs=1e-10)


@pytest.mark.parametrize("seed", [2, 3])
def test_average_precision_with_ties_matches_sklearn_and_is_order_invariant(seed):
    scores, targets = _random_problem(seed, num_samples=300, decimals=1)
    assert len(np.unique(scores)) < 15  # heavy ties
    ap = average_precision(scores, targets)
    np.testing.assert_allclose(ap, _sklearn_interpolated_ap(scores, targets), rtol=0, atol=1e-12)

    permutation = np.random.default_rng(seed).permutation(scores.shape[0])
    np.testing.assert_allclose(average_precision(scores[permutation], targets[permutation]), ap, rtol=0, atol=1e-12)

    # Documented equivalence: the released per-sample computation with negatives ranked first inside each tie.
    negatives_first = np.stack([np.lexsort((targets[:, k], -scores[:, k])) for k in range(scores.shape[1])], axis=1)
    np.testing.assert_allclose(ap, _query2label_voc_ap(scores, targets, negatives_first), rtol=0, atol=1e-12)


def test_average_precision_hand_computed_envelope_and_tie():
    # Class 0, ranked labels 1,0,0,1,1: (recall, precision) = (1/3, 1), (1/3, 1/2), (1/3, 1/3), (2/3, 1/2),
    # (1, 3/5); envelope gives 1/3 * 1 + 1/3 * 3/5 + 1/3 * 3/5 = 11/15 (non-interpolated AP would be 0.7).
    # Class 1: one sample at 0.9 (negative), then a tie at 0.5 holding the positive: a single point (1, 1/3).
    scores = np.array([[0.9, 0.9], [0.8, 0.5], [0.7, 0.5], [0.6, 0.1], [0.5, 0.1]])
    targets = np.array([[1, 0], [0, 1], [0, 0], [1, 0], [1, 0]])
    np.testing.assert_allclose(average_precision(scores, targets), [11 / 15, 1 / 3], rtol=0, atol=1e-12)
    assert mean_average_precision(scores, targets) == pytest.approx(100 * (11 / 15 + 1 / 3) / 2)


def test_classes_without_positives_are_nan_and_left_out_of_the_map_with_a_warning():
    scores, targets = _random_problem(4, num_classes=5)
    targets[:, [1, 3]] = 0
    ap = average_precision(scores, targets)
    assert np.isnan(ap[[1, 3]]).all() and np.isfinite(ap[[0, 2, 4]]).all()
    with pytest.warns(UserWarning, match=r"2 of 5 classes have no positive label .*1, 3"):
        value = mean_average_precision(scores, targets)
    assert value == pytest.approx(100 * ap[[0, 2, 4]].mean())

    with pytest.warns(UserWarning, match="no class has a positive"):
        assert np.isnan(mean_average_precision(scores, np.zeros_like(targets)))


def test_accepts_torch_tensors():
    scores, targets = _random_problem(5)
    np.testing.assert_allclose(
        average_precision(torch.from_numpy(scores).float(), torch.from_numpy(targets).bool()),
        average_precision(scores.astype(np.float32), targets),
    )
    assert multilabel_metrics(torch.from_numpy(scores), torch.from_numpy(targets)) == multilabel_metrics(
        scores, targets
    )


# --- threshold and top-k metrics ---------------------------------------------------------------------------------

# 3 images x 4 classes. Predictions at 0.5: image 0 -> {0, 1, 2}, image 1 -> {1, 2}, image 2 -> {0, 1, 2, 3}.
# Top-3 drops class 0 (0.50, the 4th score) from image 2.
HAND_SCORES = np.array([[0.9, 0.6, 0.7, 0.1], [0.2, 0.8, 0.55, 0.4], [0.5, 0.52, 0.95, 0.65]])
HAND_TARGETS = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]])


def test_multilabel_metrics_hand_computed():
    results = multilabel_metrics(HAND_SCORES, HAND_TARGETS)
    assert sorted(results) == sorted(METRIC_NAMES)
    # Per class (correct / predicted / ground truth): c0 2/2/2, c1 2/3/2, c2 1/3/1, c3 0/1/1.
    cp, cr = (1 + 2 / 3 + 1 / 3 + 0) / 4, (1 + 1 + 1 + 0) / 4
    op, orec = 5 / 9, 5 / 6
    # Top-3: c0 becomes 1/1/2.
    cp3, cr3 = (1 + 2 / 3 + 1 / 3 + 0) / 4, (1 / 2 + 1 + 1 + 0) / 4
    op3, orec3 = 4 / 8, 4 / 6
    # Per-class F1: c0 1, c1 2*(2/3)/(2/3+1) = 0.8, c2 2*(1/3)/(1/3+1) = 0.5, c3 0; top-3: c0 2*(1/2)/(3/2) = 2/3.
    expected = {
        "cp": cp, "cr": cr, "cf1": 2 * cp * cr / (cp + cr), "cf1_mean": (1 + 0.8 + 0.5 + 0) / 4,
        "op": op, "or": orec, "of1": 2 * op * orec / (op + orec),
        "cp_top3": cp3, "cr_top3": cr3, "cf1_top3": 2 * cp3 * cr3 / (cp3 + cr3),
        "cf1_mean_top3": (2 / 3 + 0.8 + 0.5 + 0) / 4,
        "op_top3": op3, "or_top3": orec3, "of1_top3": 2 * op3 * orec3 / (op3 + orec3),
    }  # fmt: skip
    for name, value in expected.items():
        assert results[name] == pytest.approx(100 * value), name
    assert results["cf1"] == pytest.approx(60.0) and results["of1"] == pytest.approx(200 / 3)
    assert results["map"] == pytest.approx(mean_average_precision(HAND_SCORES, HAND_TARGETS))


def test_per_class_thresholds_hand_computed():
    # Class 2 at 0.9 predicts only image 2 (a negative): c2 becomes 0/1/1.
    results = multilabel_metrics(HAND_SCORES, HAND_TARGETS, threshold=np.array([0.5, 0.5, 0.9, 0.5]))
    assert results["cp"] == pytest.approx(100 * (1 + 2 / 3 + 0 + 0) / 4)
    assert results["op"] == pytest.approx(100 * 4 / 7)
    assert multilabel_metrics(HAND_SCORES, HAND_TARGETS, threshold=[0.5] * 4) == multilabel_metrics(
        HAND_SCORES, HAND_TARGETS
    )


@pytest.mark.parametrize("threshold", [0.5, 0.35])
def test_multilabel_metrics_match_ml_gcn(threshold):
    scores, targets = _random_problem(6, num_samples=80, num_classes=9)
    results = multilabel_metrics(scores, targets, threshold=threshold)
    for name, value in _ml_gcn_metrics(scores, targets, threshold, top_k=3).items():
        assert results[name] == pytest.approx(value, abs=1e-10), name


def test_empty_denominators_give_finite_zeros():
    scores = np.full((4, 3), 0.2)  # nothing predicted
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])  # class 2 has no positive
    with pytest.warns(UserWarning, match="left out of the mAP"):
        results = multilabel_metrics(scores, targets)
    for name in METRIC_NAMES[1:]:
        assert results[name] == 0.0, name

    with pytest.warns(UserWarning, match="left out of the mAP"):
        results = multilabel_metrics(np.full((4, 3), 0.9), targets)
    assert results["cp"] == pytest.approx(100 * (2 / 4 + 1 / 4 + 0) / 3)
    assert results["cr"] == pytest.approx(100 * (1 + 1 + 0) / 3)  # class 2's recall 0/0 counts as 0
    assert all(np.isfinite(value) for value in results.values())


def test_top_k_ties_between_classes_prefer_lower_class_index():
    with pytest.warns(UserWarning, match="left out of the mAP"):
        results = multilabel_metrics(np.full((1, 4), 0.7), np.array([[0, 0, 0, 1]]))
    assert results["op"] == pytest.approx(25.0)
    assert results["op_top3"] == 0.0 and results["or_top3"] == 0.0
    with pytest.warns(UserWarning, match="left out of the mAP"):
        results = multilabel_metrics(np.full((1, 4), 0.7), np.array([[1, 0, 0, 0]]))
    assert results["op_top3"] == pytest.approx(100 / 3)


def test_top_k_names_follow_k_and_none_skips_them():
    assert "of1_top5" in multilabel_metrics(HAND_SCORES, HAND_TARGETS, top_k=5)
    assert sorted(multilabel_metrics(HAND_SCORES, HAND_TARGETS, top_k=None)) == sorted(METRIC_NAMES[:8])


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.72])
def test_cf1_mean_is_the_official_per_class_mean_f1(threshold):
    scores, targets = _random_problem(11, num_samples=90, num_classes=8)
    targets[:, 6] = 0  # a class without positives counts with F1 0 in the official mean
    assert not np.any(scores == threshold)  # continuous scores: strict and inclusive comparisons agree
    with pytest.warns(UserWarning, match="left out of the mAP"):
        results = multilabel_metrics(scores, targets, threshold=threshold)
    for top_k, suffix in ((None, ""), (3, "_top3")):
        official = _official_overall(scores, targets, threshold, top_k=top_k)
        for name, value in official.items():
            assert results[name + suffix] == pytest.approx(value, abs=1e-10), name + suffix
    assert results["cf1_mean"] != pytest.approx(results["cf1"], abs=1e-3)  # the two CF1 definitions differ


def test_a_score_equal_to_the_threshold_is_predicted():
    """The one documented rule (score >= threshold); the official overall() would not predict it."""
    np.testing.assert_array_equal(predict_labels(np.array([0.4, 0.5, 0.6]), 0.5), [False, True, True])
    np.testing.assert_array_equal(
        predict_labels(np.array([[0.3, 0.7], [0.2, 0.9]]), np.array([0.3, 0.8])), [[True, False], [False, True]]
    )
    scores = np.array([[0.5, 0.2], [0.9, 0.5]])
    targets = np.array([[1, 0], [1, 1]])
    results = multilabel_metrics(scores, targets, threshold=0.5, top_k=None)
    assert results["op"] == results["or"] == results["cf1_mean"] == 100.0
    # strictly above 0.5: class 0 predicts one of its two positives (F1 2/3), class 1 nothing (F1 0)
    assert _official_overall(scores, targets, 0.5)["cf1_mean"] == pytest.approx(100 * (2 / 3 + 0) / 2)
    assert sigmoid(np.zeros(2)).tolist() == [DEFAULT_THRESHOLD, DEFAULT_THRESHOLD]


def test_metric_names_and_titles():
    assert metric_names() == METRIC_NAMES
    assert metric_names(top_k=None) == METRIC_NAMES[:8]
    assert sorted(multilabel_metrics(HAND_SCORES, HAND_TARGETS, top_k=5)) == sorted(metric_names(top_k=5))
    titles = {name: metric_title(name) for name in ("map", "cf1", "cf1_mean", "of1_top3", "cf1_mean_top3")}
    assert titles == {
        "map": "mAP", "cf1": "CF1", "cf1_mean": "CF1-mean", "of1_top3": "OF1 (top-3)",
        "cf1_mean_top3": "CF1-mean (top-3)",
    }  # fmt: skip
    assert [metric_title(name) for name in ("loss", "map_top3", "cf1_top0", "cf2")] == [None] * 4


# --- per-class F1 thresholds -------------------------------------------------------------------------------------


def _sklearn_best_f1_threshold(class_scores, class_targets):
    precision, recall, thresholds = precision_recall_curve(class_targets, class_scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision[:-1] * recall[:-1] / (precision[:-1] + recall[:-1]))
    return thresholds[f1 == f1.max()].max(), f1.max()


@pytest.mark.parametrize("decimals", [None, 1])
def test_per_class_f1_thresholds_match_sklearn(decimals):
    scores, targets = _random_problem(7, num_samples=150, num_classes=6, decimals=decimals)
    targets[:, 5] = 0
    thresholds = per_class_f1_thresholds(scores, targets)
    for k in range(5):
        expected_threshold, best_f1 = _sklearn_best_f1_threshold(scores[:, k], targets[:, k])
        assert thresholds[k] == expected_threshold
        assert f1_score(targets[:, k], predict_labels(scores[:, k], thresholds[k])) == pytest.approx(best_f1)
    assert thresholds[5] == 0.5  # no positive -> default


def test_per_class_f1_thresholds_break_f1_ties_towards_the_highest_threshold():
    # Predicting {0.9} gives F1 = 2 * 1 / (1 + 2) and predicting all four gives F1 = 2 * 2 / (4 + 2): both 2/3.
    scores = np.array([[0.9], [0.8], [0.7], [0.6]])
    targets = np.array([[1], [0], [0], [1]])
    assert per_class_f1_thresholds(scores, targets)[0] == 0.9
    assert per_class_f1_thresholds(scores, targets, candidates=[0.6, 0.95, 0.9])[0] == 0.9


def test_per_class_f1_thresholds_with_candidates_match_brute_force():
    scores, targets = _random_problem(8, num_samples=100, num_classes=4)
    candidates = np.linspace(0.05, 0.95, 19)
    thresholds = per_class_f1_thresholds(scores, targets, candidates=candidates)
    for k in range(4):
        f1 = np.array([f1_score(targets[:, k], scores[:, k] >= c, zero_division=0) for c in candidates])
        assert thresholds[k] == pytest.approx(candidates[f1 == f1.max()].max())
    # No candidate predicts a positive -> default.
    assert np.all(per_class_f1_thresholds(scores, targets, candidates=[1.5], default_threshold=0.4) == 0.4)


# --- Trainer compute_metrics -------------------------------------------------------------------------------------


def test_compute_metrics_applies_sigmoid_to_logits_or_first_tuple_element():
    scores, targets = _random_problem(9)
    logits = np.log(scores / (1 - scores)).astype(np.float32)
    expected = multilabel_metrics(torch.sigmoid(torch.from_numpy(logits)).double().numpy(), targets)
    label_ids = targets.astype(np.float32)
    for predictions in (logits, (logits, np.zeros((len(logits), 7, 4), np.float32))):
        results = compute_metrics(EvalPrediction(predictions=predictions, label_ids=label_ids))
        assert sorted(results) == sorted(METRIC_NAMES)
        for name in METRIC_NAMES:
            assert results[name] == pytest.approx(expected[name], abs=1e-9), name


def test_multilabel_metrics_callable_with_per_class_thresholds():
    logits = np.log(HAND_SCORES / (1 - HAND_SCORES))
    metric = MultiLabelMetrics(threshold=[0.5, 0.5, 0.9, 0.5], top_k=3)
    results = metric(EvalPrediction(predictions=logits, label_ids=HAND_TARGETS))
    assert results["cp"] == pytest.approx(100 * (1 + 2 / 3 + 0 + 0) / 4)
    assert MultiLabelMetrics()((logits, HAND_TARGETS))["cf1"] == pytest.approx(60.0)


# --- validation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores, targets, message",
    [
        (np.zeros(4), np.zeros(4), r"`scores` must have shape \[N, K\]"),
        (np.zeros((0, 3)), np.zeros((0, 3)), r"`scores` must have shape \[N, K\]"),
        (np.zeros((4, 3)), np.zeros((4, 2)), r"`targets` must be 0/1 multi-hot labels with the same shape"),
        (np.zeros((2, 2)), np.array([[0, 2], [1, 0]]), r"`targets` must be 0/1 multi-hot labels, found values \[2\]"),
        (np.array([[np.nan, 0.1]]), np.array([[0, 1]]), "`scores` contains NaN"),
    ],
)
def test_invalid_inputs_raise_clear_errors(scores, targets, message):
    for function in (average_precision, multilabel_metrics, per_class_f1_thresholds):
        with pytest.raises(ValueError, match=message):
            function(scores, targets)


def test_invalid_threshold_top_k_and_logits_raise_clear_errors():
    with pytest.raises(ValueError, match=r"`threshold` must be a scalar or an array of shape \[K\] = \[4\]"):
        multilabel_metrics(HAND_SCORES, HAND_TARGETS, threshold=[0.5, 0.5])
    with pytest.raises(ValueError, match="`top_k` must be a positive integer"):
        multilabel_metrics(HAND_SCORES, HAND_TARGETS, top_k=0)
    with pytest.raises(ValueError, match=r"must be probabilities in \[0, 1\]"):
        multilabel_metrics(HAND_SCORES * 4 - 2, HAND_TARGETS)
    with pytest.raises(ValueError, match=r"logits of shape \[N, K\]"):
        compute_metrics(EvalPrediction(predictions=np.zeros((3, 4, 2)), label_ids=HAND_TARGETS))
    with pytest.raises(ValueError, match="`candidates` must be a non-empty 1-D array"):
        per_class_f1_thresholds(HAND_SCORES, HAND_TARGETS, candidates=[])


# --- evaluate module ---------------------------------------------------------------------------------------------

_EVALUATE_SCRIPT = r"""
import json, socket, sys
import numpy as np

def _no_network(*args, **kwargs):
    raise OSError("network access attempted")

socket.socket.connect = _no_network
socket.create_connection = _no_network

import evaluate
from sadcl_hf.evaluation import METRIC_PATH, load_metric

data = np.load(sys.argv[1])
metric = load_metric(keep_in_memory=True)
results = {"load_metric": metric.compute(predictions=data["scores"], references=data["targets"])}

metric = evaluate.load(str(METRIC_PATH), keep_in_memory=True)
for start in range(0, len(data["scores"]), 16):
    metric.add_batch(predictions=data["scores"][start:start + 16], references=data["targets"][start:start + 16])
results["batched"] = metric.compute(
    threshold=data["thresholds"].tolist(), return_per_class_ap=True
)
results["logits"] = metric.compute(
    predictions=data["logits"], references=data["targets"], from_logits=True, top_k=None
)
print(json.dumps(results))
"""


def test_evaluate_module_loads_offline_and_matches_the_library(tmp_path):
    scores, targets = _random_problem(10, num_samples=70, num_classes=6)
    targets[:, 4] = 0  # a class without positives
    scores = scores.astype(np.float32)  # evaluate stores predictions as float32
    logits = np.log(scores / (1 - scores)).astype(np.float32)
    thresholds = np.linspace(0.3, 0.7, 6)
    np.savez(tmp_path / "data.npz", scores=scores, targets=targets, logits=logits, thresholds=thresholds)
    env = dict(
        os.environ,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
    )
    completed = subprocess.run(
        [sys.executable, "-c", _EVALUATE_SCRIPT, str(tmp_path / "data.npz")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr
    results = json.loads(completed.stdout.strip().splitlines()[-1])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = multilabel_metrics(scores, targets)
        expected_thresholded = multilabel_metrics(scores, targets, threshold=thresholds)
        expected_from_logits = multilabel_metrics(
            torch.sigmoid(torch.from_numpy(logits).double()).numpy(), targets, top_k=None
        )
    assert results["load_metric"] == pytest.approx(expected, abs=1e-12)
    per_class_ap = results["batched"].pop("per_class_ap")
    assert results["batched"] == pytest.approx(expected_thresholded, abs=1e-12)
    np.testing.assert_allclose(per_class_ap, 100 * average_precision(scores, targets), rtol=0, atol=1e-12)
    assert np.isnan(per_class_ap[4])
    assert results["logits"] == pytest.approx(expected_from_logits, abs=1e-9)
    assert METRIC_PATH.joinpath("multilabel_map.py").is_file()
