"""`evaluate` metric: mAP (VOC, all-point interpolation) and CP/CR/CF1/OP/OR/OF1 (threshold and top-k) for
multi-label image classification, as reported in the SADCL paper.

Load it offline from the installed package with ``sadcl_hf.evaluation.load_metric()`` (or
``evaluate.load("<path to sadcl_hf/metrics/multilabel_map>")``). The computation is ``sadcl_hf.evaluation``'s, so
the numbers are identical to :func:`sadcl_hf.evaluation.multilabel_metrics` on the same (float32) scores.
"""

import datasets
import evaluate
import numpy as np

from sadcl_hf.evaluation import DEFAULT_THRESHOLD, average_precision, multilabel_metrics, sigmoid

__all__ = ["MultilabelMAP"]

_CITATION = """\
@inproceedings{ma2023sadcl,
  title     = {Semantic-Aware Dual Contrastive Learning for Multi-label Image Classification},
  author    = {Ma, Leilei and Sun, Dengdi and Wang, Lei and Zhao, Haifeng and Luo, Bin},
  booktitle = {ECAI 2023},
  series    = {Frontiers in Artificial Intelligence and Applications},
  volume    = {372},
  year      = {2023},
  doi       = {10.3233/FAIA230451}
}
"""

_DESCRIPTION = """\
Multi-label classification metrics, in percent: mAP (per class VOC average precision with the precision envelope,
all-point interpolation, averaged over the classes that have a positive), and per-class (CP, CR, CF1) and overall
(OP, OR, OF1) precision, recall and F1 at a probability threshold (a label is predicted when its score is >= the
threshold), plus the same for the top-k predictions per image (a label counts as predicted when it is among the
image's k highest scores and reaches the threshold). CF1 is ML-GCN's F1 of CP and CR; CF1-mean (`cf1_mean`) is the mean
of per-class F1, the CF1 of the official SADCL/Query2Label `overall()` helper.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: [N, K] probabilities (or logits with `from_logits=True`), one row of K class scores per image.
        Stored as float32.
    references: [N, K] 0/1 multi-hot ground truth.
    threshold: probability threshold (default 0.5), a scalar or a list of K per-class thresholds.
    top_k: k of the top-k metrics (default 3); None skips them.
    from_logits: apply a sigmoid to `predictions` first (default False).
    return_per_class_ap: also return "per_class_ap", a list of K APs in percent (NaN for classes without a positive).
Returns:
    map, cp, cr, cf1, cf1_mean, op, or, of1 and cp_top3 ... of1_top3 (the same with _top3, for top_k=3), in percent.
Examples:
    >>> from sadcl_hf.evaluation import load_metric
    >>> metric = load_metric()
    >>> results = metric.compute(predictions=[[0.9, 0.2], [0.4, 0.7]], references=[[1, 0], [0, 1]])
    >>> results["map"], results["cf1"]
    (100.0, 100.0)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MultilabelMAP(evaluate.Metric):
    """mAP and CP/CR/CF1/CF1-mean/OP/OR/OF1 (threshold and top-k) for multi-label classification."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                }
            ),
            reference_urls=["https://doi.org/10.3233/FAIA230451"],
        )

    def _compute(
        self,
        predictions,
        references,
        threshold=DEFAULT_THRESHOLD,
        top_k=3,
        from_logits=False,
        return_per_class_ap=False,
    ):
        row_lengths = {len(row) for row in predictions} | {len(row) for row in references}
        if len(row_lengths) > 1:
            raise ValueError(
                "`predictions` and `references` must be rows of K values of one length ([N, K]), "
                f"got row lengths {sorted(row_lengths)}"
            )
        scores = np.asarray(predictions, dtype=np.float64)
        targets = np.asarray(references)
        if from_logits:
            scores = sigmoid(scores)
        results = multilabel_metrics(scores, targets, threshold=threshold, top_k=top_k)
        if return_per_class_ap:
            results["per_class_ap"] = (average_precision(scores, targets) * 100.0).tolist()
        return results
