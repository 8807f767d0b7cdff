# Copyright 2025 The sadcl-hf developers. Licensed under the Apache License, Version 2.0.
"""Losses of SADCL's dual contrastive objective.

The training objective of SADCL (ECAI 2023) is

    L = L_ASL + lambda_s * L_SSCL + lambda_p * L_PSCL,    lambda_s = 100, lambda_p = 50,

with

* :class:`AsymmetricLoss` -- the classification loss on the group-wise linear logits;
* :class:`SampleToSampleContrastiveLoss` -- SSCL, the sample-to-sample supervised contrastive loss on the
  projected label-level features (one view per image plus a memory-bank view);
* :class:`PrototypeToSampleContrastiveLoss` -- PSCL, the prototype-to-sample contrastive loss between the
  projected label-level features and the projected class prototypes.

All three reproduce the released implementation (``yu-gi-oh-leilei/SADCL``, ``lib_sadcl/models/loss``), including
its value conventions, but are computed in a numerically stable way, in float32 under mixed precision, and -- for
the contrastive terms -- only on the positive label-level features, so their cost grows with the number of positive
labels in the batch rather than with ``(batch_size * num_views * num_labels) ** 2``.

Both contrastive losses L2-normalise the features internally (the released SSCL calls ``F.normalize``, PSCL uses the
cosine similarity): callers must not (and need not) normalise beforehand.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_sadcl import SSCL_MODES, SADCLConfig

__all__ = [
    "AsymmetricLoss",
    "LOSS_COMPONENTS",
    "LOSS_TERMS",
    "LossTerm",
    "PrototypeToSampleContrastiveLoss",
    "SADCLLoss",
    "SADCLLossOutput",
    "SampleToSampleContrastiveLoss",
    "confident_positives",
]


def _config_default(field: str) -> Any:
    """The default of a `SADCLConfig` field: the config is the one home of the loss settings (the released COCO
    run); the losses take them as explicit arguments."""
    return SADCLConfig.__dataclass_fields__[field].default


def confident_positives(logits: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """`[B, K]` mask of SADCL's confident positives: the class is present (`labels > 0.5`) and predicted with
    `sigmoid(logits) > threshold` (strict, as the release). It selects what enters the memory bank (Sec. 3.2) and
    what a class prototype averages (Sec. 3.3)."""
    return (labels > 0.5) & (torch.sigmoid(logits.float()) > threshold)


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """Float64 stays float64; every other floating dtype (fp16, bf16, fp32) is computed in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _check_labels(labels: torch.Tensor, batch_size: int, num_labels: int, name: str) -> None:
    if labels.dim() != 2 or tuple(labels.shape) != (batch_size, num_labels):
        raise ValueError(
            f"{name}: `labels` must have shape [batch_size, num_labels] = [{batch_size}, {num_labels}], "
            f"got {list(labels.shape)}."
        )


class LossTerm(nn.Module):
    """A term of the SADCL objective (eq. 12). A subclass and its entry in `LOSS_TERMS` are all a new term needs:

    * `name`: the term's key in `SADCLLossOutput.terms`, `SADCLImageClassifierOutput.loss_terms` and the training
      logs; its constructor arguments are read from the config fields `{name}_{argument}` and its weight from
      `{name}_weight` (1 where the config has no such field);
    * `inputs`: the tensors of `SADCLLoss.forward` it reads; the term is computed when all of them are given;
    * `contrastive`: its inputs are gathered over processes with `gather_across_processes` (the contrastive terms
      contrast the global batch; the classification loss stays per process);
    * `loss_from_inputs(inputs)`: the scalar loss from those tensors.
    """

    name: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ()
    contrastive: ClassVar[bool] = False

    def loss_from_inputs(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: Any) -> LossTerm:
        """The term with each constructor argument `x` taken from `config.{name}_x` where the config has it."""
        arguments = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
        values = {
            arg: getattr(config, f"{cls.name}_{arg}") for arg in arguments if hasattr(config, f"{cls.name}_{arg}")
        }
        return cls(**values)

    @classmethod
    def default_weight(cls) -> float:
        """`SADCLConfig`'s `{name}_weight` default, or 1."""
        fields = SADCLConfig.__dataclass_fields__
        return float(fields[f"{cls.name}_weight"].default) if f"{cls.name}_weight" in fields else 1.0


class AsymmetricLoss(LossTerm):
    r"""Asymmetric loss (ASL, Ridnik et al. 2021) with the scaling of the SADCL release.

    Per element, with :math:`p = \sigma(x)` and :math:`p_m = \min(1 - p + \text{clip}, 1)`,

    .. math::
        \ell = -\big[y \log\max(p, \epsilon) (1 - p)^{\gamma_+}
               + (1 - y) \log\max(p_m, \epsilon) (1 - p_m)^{\gamma_-}\big],

    and the loss is ``1000 * mean(l)`` over the batch and the classes (the released
    ``AsymmetricLossOptimized``: ``-sum / batch_size / num_labels * 1000``). With ``gamma_neg = gamma_pos = 0`` and
    ``clip = 0`` (the released COCO run) it is 1000 x the binary cross-entropy with probabilities clamped at ``eps``.

    The logarithms are computed with ``logsigmoid`` (never ``log(1 - sigmoid(x))`` by subtraction); clamping the
    probability at ``eps`` is reproduced as clamping the log-probability at ``log(eps)`` (same value, same zero
    gradient where clamped).

    Args:
        gamma_neg: focusing exponent of the negative labels.
        gamma_pos: focusing exponent of the positive labels.
        clip: probability margin added to ``1 - p`` for the negatives (asymmetric clipping); 0 disables it.
        eps: lower clamp of the probabilities inside the logarithms.
        focal_weight_grad: let the gradient flow through the focal weight (the release's
            ``disable_torch_grad_focal_loss=False``). Off by default, as in the released configuration.
    """

    name = "asl"
    inputs = ("logits", "labels")

    def __init__(
        self,
        gamma_neg: float = _config_default("asl_gamma_neg"),
        gamma_pos: float = _config_default("asl_gamma_pos"),
        clip: float = _config_default("asl_clip"),
        eps: float = _config_default("asl_eps"),
        focal_weight_grad: bool = False,
    ) -> None:
        super().__init__()
        if clip is not None and clip < 0:
            raise ValueError(f"AsymmetricLoss: `clip` must be >= 0, got {clip}.")
        if eps <= 0:
            raise ValueError(f"AsymmetricLoss: `eps` must be > 0, got {eps}.")
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip or 0.0
        self.eps = eps
        self.focal_weight_grad = focal_weight_grad

    def extra_repr(self) -> str:
        return (
            f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, eps={self.eps}, "
            f"focal_weight_grad={self.focal_weight_grad}"
        )

    def loss_from_inputs(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self(inputs["logits"], inputs["labels"])

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: `[batch_size, num_labels]` classifier outputs.
            labels: `[batch_size, num_labels]` multi-hot targets (any float or integer dtype).

        Returns:
            Scalar loss (float32, or float64 for float64 logits).
        """
        if logits.dim() != 2:
            raise ValueError(
                f"AsymmetricLoss: `logits` must have shape [batch_size, num_labels], got {list(logits.shape)}."
            )
        _check_labels(labels, logits.shape[0], logits.shape[1], "AsymmetricLoss")
        dtype = _compute_dtype(logits)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.to(dtype)
            labels = labels.to(dtype)
            log_eps = torch.log(torch.tensor(self.eps, dtype=dtype, device=logits.device))

            log_prob_pos = F.logsigmoid(logits).clamp(min=log_eps)
            if self.clip > 0:
                prob_neg = (torch.sigmoid(-logits) + self.clip).clamp(max=1.0)
                log_prob_neg = torch.log(prob_neg.clamp(min=self.eps))
                # 1 - prob_neg without cancellation: max(sigmoid(x) - clip, 0).
                one_minus_prob_neg = (torch.sigmoid(logits) - self.clip).clamp(min=0.0)
            else:
                log_prob_neg = F.logsigmoid(-logits).clamp(min=log_eps)
                one_minus_prob_neg = torch.sigmoid(logits)
            loss = labels * log_prob_pos + (1 - labels) * log_prob_neg

            if self.gamma_neg > 0 or self.gamma_pos > 0:
                with torch.set_grad_enabled(self.focal_weight_grad and torch.is_grad_enabled()):
                    # 1 - p_t, with p_t = p for positives and p_m for negatives (exact for soft targets too).
                    one_minus_pt = labels * torch.sigmoid(-logits) + (1 - labels) * one_minus_prob_neg
                    exponent = self.gamma_pos * labels + self.gamma_neg * (1 - labels)
                    focal_weight = torch.pow(one_minus_pt, exponent)
                loss = loss * focal_weight

            return -loss.sum() / logits.shape[0] / logits.shape[1] * 1000


class SampleToSampleContrastiveLoss(LossTerm):
    r"""Sample-to-sample contrastive loss (SSCL), the label-level supervised contrastive loss of SADCL (Eq. 5-6).

    Anchors are the positive label-level features :math:`z_{ij}` (view ``v``, sample ``b``, class ``c`` with
    ``labels[b, c] == 1``); for an anchor :math:`i`, :math:`A(i)` is every other positive feature (any class, sample
    or view) and :math:`P(i) \subset A(i)` the features of the same class (other samples and the sample's other
    view). With L2-normalised features and :math:`s_{ia} = z_i \cdot z_a / \tau`,

    .. math::
        \mathcal{L}_i = -\frac{\tau}{\tau_b} \frac{1}{|P(i)|} \sum_{p \in P(i)}
            \Big(s_{ip} - \log \sum_{a \in A(i)} e^{s_{ia}}\Big).

    `mode` chooses how the gathered positive features are contrasted:

    * ``"reference"``: as the released ``MultiSupConLoss`` (what produced the paper's numbers), see
      [`_reference_contrast`];
    * ``"corrected"``: the equation above exactly, see [`_corrected_contrast`].

    Only the positive features are gathered, so time and memory grow with the number of positive labels ``n`` as
    ``O((num_views * n) ** 2 * dim)`` instead of ``O((batch_size * num_views * num_labels) ** 2)``.

    Args:
        temperature: :math:`\tau`.
        base_temperature: :math:`\tau_b`.
        mode: one of `SSCL_MODES` (``"reference"`` or ``"corrected"``).
    """

    name = "sscl"
    inputs = ("projected_label_features", "projected_memory_bank", "labels")
    contrastive = True

    def __init__(
        self,
        temperature: float = _config_default("sscl_temperature"),
        base_temperature: float = _config_default("sscl_base_temperature"),
        mode: str = _config_default("sscl_mode"),
    ) -> None:
        super().__init__()
        if mode not in _SSCL_CONTRASTS:
            raise ValueError(f"SampleToSampleContrastiveLoss: `mode` must be one of {SSCL_MODES}, got {mode!r}.")
        self.mode = mode
        if temperature <= 0 or base_temperature <= 0:
            raise ValueError(
                "SampleToSampleContrastiveLoss: `temperature` and `base_temperature` must be > 0, "
                f"got {temperature} and {base_temperature}."
            )
        self.temperature = temperature
        self.base_temperature = base_temperature

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, base_temperature={self.base_temperature}, mode={self.mode!r}"

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: `[batch_size, num_views, num_labels, dim]` label-level features; in SADCL
                `stack([projected_label_features, projected_memory_bank], dim=1)`. Normalised internally.
            labels: `[batch_size, num_labels]` multi-hot targets; entries > 0.5 are positive.

        Returns:
            Scalar loss (float32, or float64 for float64 features); 0 with a zero gradient when no label is positive.
        """
        if features.dim() != 4:
            raise ValueError(
                "SampleToSampleContrastiveLoss: `features` must have shape [batch_size, num_views, num_labels, dim], "
                f"got {list(features.shape)}."
            )
        batch_size, num_views, num_labels, dim = features.shape
        _check_labels(labels, batch_size, num_labels, "SampleToSampleContrastiveLoss")
        positive = labels > 0.5
        sample_index, class_index = positive.nonzero(as_tuple=True)
        # [n, V, D] -> [V * n, D], view-major like the release.
        embeddings = features[sample_index, :, class_index].transpose(0, 1).reshape(-1, dim)
        return self._loss_from_positive_rows(embeddings, positive, sample_index, class_index, num_views)

    def forward_views(self, views: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Same loss as `forward(torch.stack(views, dim=1), labels)`, without materialising the stacked tensor.

        Args:
            views: `num_views` tensors of shape `[batch_size, num_labels, dim]`.
            labels: `[batch_size, num_labels]` multi-hot targets.
        """
        if len(views) == 0 or any(view.dim() != 3 or view.shape != views[0].shape for view in views):
            raise ValueError(
                "SampleToSampleContrastiveLoss: `views` must be a non-empty sequence of tensors of one shape "
                f"[batch_size, num_labels, dim], got shapes {[list(view.shape) for view in views]}."
            )
        batch_size, num_labels, _ = views[0].shape
        _check_labels(labels, batch_size, num_labels, "SampleToSampleContrastiveLoss")
        positive = labels > 0.5
        sample_index, class_index = positive.nonzero(as_tuple=True)
        embeddings = torch.cat([view[sample_index, class_index] for view in views], dim=0)
        return self._loss_from_positive_rows(embeddings, positive, sample_index, class_index, len(views))

    def _loss_from_positive_rows(
        self,
        embeddings: torch.Tensor,
        positive: torch.Tensor,
        sample_index: torch.Tensor,
        class_index: torch.Tensor,
        num_views: int,
    ) -> torch.Tensor:
        """`embeddings`: `[num_views * n, dim]` positive features, view-major; `sample_index`, `class_index`: `[n]`."""
        num_positive = sample_index.numel()
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            embeddings = embeddings.to(_compute_dtype(embeddings))
            if num_positive == 0:
                return embeddings.sum()  # 0, with a zero gradient, as in the release
            rows = _PositiveRows(
                embeddings=F.normalize(embeddings, dim=-1),
                view_index=torch.arange(num_views, device=embeddings.device).repeat_interleave(num_positive),
                sample_index=sample_index.repeat(num_views),
                class_index=class_index.repeat(num_views),
                positive=positive,
                num_views=num_views,
            )
            return self.contrast(rows)

    def contrast(self, rows: _PositiveRows) -> torch.Tensor:
        """The loss over the gathered, L2-normalised positive rows, as `mode` computes it."""
        return _SSCL_CONTRASTS[self.mode](rows, self.temperature, self.base_temperature)

    def loss_from_inputs(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        views = [inputs["projected_label_features"], inputs["projected_memory_bank"]]
        return self.forward_views(views, inputs["labels"])


@dataclass
class _PositiveRows:
    """The positive label-level features of a batch, view-major: `embeddings` `[N, dim]` (L2-normalised, N =
    num_views * n) with each row's `view_index`, `sample_index` and `class_index` `[N]`; `positive` is the
    `[batch_size, num_labels]` label mask."""

    embeddings: torch.Tensor
    view_index: torch.Tensor
    sample_index: torch.Tensor
    class_index: torch.Tensor
    positive: torch.Tensor
    num_views: int

    def same_class_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(`self_mask`, `same_class`) `[N, N]`: the diagonal, and pairs of distinct rows of one class."""
        num_rows = self.embeddings.shape[0]
        self_mask = torch.eye(num_rows, dtype=torch.bool, device=self.embeddings.device)
        same_class = (self.class_index[:, None] == self.class_index[None, :]) & ~self_mask
        return self_mask, same_class


def _corrected_contrast(rows: _PositiveRows, temperature: float, base_temperature: float) -> torch.Tensor:
    """SSCL as the paper's equation: every positive feature is an anchor, exact log-sum-exp, no `eps`, no offsets;
    the mean over the anchors with a non-empty :math:`P(i)` (all of them when `num_views >= 2`)."""
    self_mask, same_class = rows.same_class_pairs()
    num_positive_pairs = same_class.sum(1)
    anchors = num_positive_pairs > 0
    # Only rows with a non-empty P(i) are anchors; their A(i) is then non-empty too.
    similarity = rows.embeddings[anchors] @ rows.embeddings.T / temperature  # [A, N]
    same_class = same_class[anchors]
    log_denominator = torch.logsumexp(similarity.masked_fill(self_mask[anchors], float("-inf")), dim=1)
    mean_positive = (similarity * same_class).sum(1) / num_positive_pairs[anchors]
    anchor_losses = -(temperature / base_temperature) * (mean_positive - log_denominator)
    return anchor_losses.sum() / anchors.sum().clamp(min=1)


_REFERENCE_EPS = 1e-5


def _reference_contrast(rows: _PositiveRows, temperature: float, base_temperature: float) -> torch.Tensor:
    """SSCL as the released `MultiSupConLoss` computes it (value and gradient).

    Its label mask is flattened sample-major while the anchors are ordered view-major, so anchor ``(v, b, c)`` only
    counts when ``labels[(v * batch_size + b) // num_views, c] == 1`` too; the sum is still divided by
    ``num_views * labels.sum()``. The numerator subtracts the detached maximum over classes of the masked
    similarities of the same pair of rows, the denominator the detached row maximum (both including the zeros of
    masked entries), and the denominator carries ``+ 1e-5`` inside the logarithm.
    """
    batch_size = rows.positive.shape[0]
    # Row of the release's [V * bs, nc, dim] contrast tensor; anchor (v, b, c) needs labels[row // V, c] too.
    contrast_row = rows.view_index * batch_size + rows.sample_index
    anchors = rows.positive[contrast_row // rows.num_views, rows.class_index]
    similarity = rows.embeddings @ rows.embeddings.T / temperature  # [N, N], all positive rows
    self_mask, same_class = rows.same_class_pairs()
    with torch.no_grad():
        # Denominator offset: row max over the masked similarities (masked entries, e.g. the diagonal, are 0).
        denominator_offset = similarity.detach().masked_fill(self_mask, 0.0).amax(1).clamp(min=0.0)
        numerator_offset = _reference_numerator_offset(rows, similarity.detach(), same_class, contrast_row)

    similarity = similarity[anchors]
    same_class = same_class[anchors]
    exp_sum = torch.exp(similarity - denominator_offset[anchors, None]).masked_fill(self_mask[anchors], 0.0).sum(1)
    exp_sum = torch.where(exp_sum > 0, exp_sum, torch.ones_like(exp_sum))
    log_denominator = torch.log(exp_sum + _REFERENCE_EPS)
    num_positive_pairs = same_class.sum(1)
    numerator = ((similarity - numerator_offset[anchors]) * same_class).sum(1)
    mean_log_prob = (numerator - num_positive_pairs * log_denominator) / num_positive_pairs.clamp(min=1)
    anchor_losses = -(temperature / base_temperature) * mean_log_prob
    return anchor_losses.sum() / max(rows.embeddings.shape[0], 1)


def _reference_numerator_offset(
    rows: _PositiveRows, similarity: torch.Tensor, same_class: torch.Tensor, contrast_row: torch.Tensor
) -> torch.Tensor:
    """`[N, N]` offset of pair (i, j): the max over classes of the masked intra-class similarity of their two
    contrast rows, i.e. over their common positive classes, plus a 0 when some class is not common."""
    batch_size, num_labels = rows.positive.shape
    num_contrast_rows = rows.num_views * batch_size
    pair_key = contrast_row[:, None] * num_contrast_rows + contrast_row[None, :]
    pair_max = similarity.new_full((num_contrast_rows * num_contrast_rows,), float("-inf"))
    pair_max.scatter_reduce_(0, pair_key[same_class], similarity[same_class], reduce="amax")
    positive_float = rows.positive.to(similarity.dtype)
    common_classes = positive_float @ positive_float.T  # [bs, bs]
    has_masked_class = common_classes[rows.sample_index[:, None], rows.sample_index[None, :]] < num_labels
    offset = pair_max[pair_key]
    offset = torch.where(has_masked_class, offset.clamp(min=0.0), offset)
    return offset.masked_fill(~same_class, 0.0)


_SSCL_CONTRASTS = {"reference": _reference_contrast, "corrected": _corrected_contrast}
if tuple(_SSCL_CONTRASTS) != SSCL_MODES:
    raise ImportError(f"SSCL contrasts {tuple(_SSCL_CONTRASTS)} do not match SADCLConfig's SSCL_MODES {SSCL_MODES}")


class _PrototypeCosineSimilarity(torch.autograd.Function):
    """`cos(embeddings[b, k], prototypes[k])` -> `[B, K]` for unit-norm `prototypes` `[K, D]`.

    Same value and gradient as normalising `embeddings` first (norm clamped at 1e-12, like `F.normalize`), but the
    backward pass writes the `[B, K, D]` gradient in a single fused pass instead of several full-size temporaries:
    this is the dominant cost of the contrastive losses at paper scale.
    """

    @staticmethod
    def forward(ctx, embeddings: torch.Tensor, unit_prototypes: torch.Tensor) -> torch.Tensor:
        raw_norm = torch.linalg.vector_norm(embeddings, dim=-1)  # [B, K]
        norm = raw_norm.clamp(min=1e-12)
        dot = torch.bmm(embeddings.transpose(0, 1), unit_prototypes.unsqueeze(-1)).squeeze(-1).T  # [B, K]
        cosine = dot / norm
        ctx.save_for_backward(embeddings, unit_prototypes, norm, cosine, raw_norm > 1e-12)
        return cosine

    @staticmethod
    def backward(ctx, grad_cosine: torch.Tensor):
        embeddings, unit_prototypes, norm, cosine, norm_not_clamped = ctx.saved_tensors
        grad_over_norm = grad_cosine / norm  # [B, K]
        grad_embeddings = grad_prototypes = None
        if ctx.needs_input_grad[0]:
            # d cos / d e = p / |e| - cos * e / |e|^2 (the second term vanishes where the norm is clamped).
            radial = torch.where(norm_not_clamped, -grad_over_norm * cosine / norm, torch.zeros_like(norm))
            grad_embeddings = embeddings * radial.unsqueeze(-1)
            grad_embeddings.addcmul_(grad_over_norm.unsqueeze(-1), unit_prototypes)
        if ctx.needs_input_grad[1]:
            grad_prototypes = torch.bmm(grad_over_norm.T.unsqueeze(1), embeddings.transpose(0, 1)).squeeze(1)
        return grad_embeddings, grad_prototypes


class PrototypeToSampleContrastiveLoss(LossTerm):
    r"""Prototype-to-sample contrastive loss (PSCL, Eq. 7-8 of the paper), cosine metric.

    With :math:`s_{bc} = \cos(z_{bc}, p_c) / \tau` between the label-level feature of sample ``b`` for class ``c``
    and the prototype of class ``c``, the released ``Semantic2PrototypeConLoss`` computes, per class,

    * class present in the batch: :math:`\log\sum_{b} e^{s_{bc}} - \log\sum_{b: y_{bc}=1} e^{s_{bc}}`;
    * class absent from the batch: :math:`\log\sum_{b} e^{s_{bc}} - \operatorname{sg}(\max_b s_{bc})`
      (a constant offset in value, but it pushes every sample away from that prototype),

    and divides the sum over classes by the number of positive labels in the batch. When no label is positive the
    release crashes; this implementation returns the mean over classes of the absent-class terms instead (finite,
    with a finite gradient).

    Args:
        temperature: :math:`\tau`.
    """

    name = "pscl"
    inputs = ("projected_label_features", "projected_prototypes", "labels")
    contrastive = True

    def __init__(self, temperature: float = _config_default("pscl_temperature")) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"PrototypeToSampleContrastiveLoss: `temperature` must be > 0, got {temperature}.")
        self.temperature = temperature

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def loss_from_inputs(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self(inputs["projected_label_features"], inputs["projected_prototypes"], inputs["labels"])

    def forward(self, embeddings: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embeddings: `[batch_size, num_labels, dim]` label-level features (normalised internally).
            prototypes: `[num_labels, dim]` or `[1, num_labels, dim]` class prototypes (normalised internally).
            labels: `[batch_size, num_labels]` multi-hot targets; entries > 0.5 are positive.

        Returns:
            Scalar loss (float32, or float64 for float64 embeddings).
        """
        if embeddings.dim() != 3:
            raise ValueError(
                "PrototypeToSampleContrastiveLoss: `embeddings` must have shape [batch_size, num_labels, dim], "
                f"got {list(embeddings.shape)}."
            )
        batch_size, num_labels, dim = embeddings.shape
        if prototypes.dim() == 3 and prototypes.shape[0] == 1:
            prototypes = prototypes[0]
        if tuple(prototypes.shape) != (num_labels, dim):
            raise ValueError(
                "PrototypeToSampleContrastiveLoss: `prototypes` must have shape [num_labels, dim] or "
                f"[1, num_labels, dim] = [{num_labels}, {dim}], got {list(prototypes.shape)}."
            )
        _check_labels(labels, batch_size, num_labels, "PrototypeToSampleContrastiveLoss")
        dtype = _compute_dtype(embeddings)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            prototypes = F.normalize(prototypes.to(dtype), dim=-1)
            similarity = _PrototypeCosineSimilarity.apply(embeddings.to(dtype), prototypes).T  # [K, B]
            similarity = similarity / self.temperature
            positive = (labels > 0.5).T  # [K, B]
            present = positive.any(dim=1)  # [K]
            log_sum_all = torch.logsumexp(similarity, dim=1)
            # Absent classes keep every sample so that the unused branch stays finite (no -inf, no NaN gradient).
            keep = positive | ~present[:, None]
            log_sum_positive = torch.logsumexp(similarity.masked_fill(~keep, float("-inf")), dim=1)
            absent_offset = similarity.detach().amax(dim=1)
            class_losses = log_sum_all - torch.where(present, log_sum_positive, absent_offset)
            num_positive = positive.sum()
            return torch.where(num_positive > 0, class_losses.sum() / num_positive.clamp(min=1), class_losses.mean())


LOSS_TERMS: dict[str, type[LossTerm]] = {
    term.name: term for term in (AsymmetricLoss, SampleToSampleContrastiveLoss, PrototypeToSampleContrastiveLoss)
}
"""The registry of the objective's terms, by name, in the order they are summed and logged."""

LOSS_COMPONENTS = tuple(LOSS_TERMS)
"""The terms' names: keys of `SADCLLossOutput.terms` and `SADCLImageClassifierOutput.loss_terms`, logged as such."""

CONTRASTIVE_INPUTS = ("projected_label_features", "projected_memory_bank", "projected_prototypes")
"""The inputs of the contrastive terms: all given (the SADCL objective) or none (classification loss only)."""


@dataclass
class SADCLLossOutput:
    """The SADCL objective and its terms.

    Args:
        loss: `[]` the weighted sum of `terms` (eq. 12: `asl + sscl_weight * sscl + pscl_weight * pscl`).
        terms: `{name: []}` each computed term, unweighted, in `LOSS_TERMS` order (only `asl` when the contrastive
            inputs are not given).
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def _world_size() -> int:
    distributed = torch.distributed
    return distributed.get_world_size() if distributed.is_available() and distributed.is_initialized() else 1


def _all_gather_with_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """`[B, ...]` on each of W processes -> `[W * B, ...]` on every process, in rank order. The gradient flows back
    to each process's own rows (summed over the processes that used them), so with DDP's gradient averaging the
    parameters get the gradient of a loss computed over the global batch."""
    from torch.distributed._functional_collectives import all_gather_tensor_autograd, wait_tensor

    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(_world_size())]
    torch.distributed.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    if len({int(size) for size in sizes}) != 1:
        raise ValueError(
            f"gather_contrastive_features needs the same batch size on every process, got {[int(s) for s in sizes]} "
            "(keep the accelerate/Trainer default even_batches=True)"
        )
    gathered = all_gather_tensor_autograd(tensor.contiguous(), gather_dim=0, group=torch.distributed.group.WORLD)
    return wait_tensor(gathered)


class SADCLLoss(nn.Module):
    """The SADCL objective: the weighted sum of its terms (paper, eq. 12: `ASL + 100 * SSCL + 50 * PSCL`).

    Args:
        terms: `{name: LossTerm}`; default: each class of `LOSS_TERMS` with its default arguments.
        weights: `{name: weight}`; a term without an entry takes its `LossTerm.default_weight()`.
        gather_across_processes: in distributed training, compute the contrastive terms over the features of every
            process (differentiable all-gather; every process must have the same batch size) instead of each
            process's own batch, as the paper does. With DDP the gradients are those of the contrastive loss over the
            global batch.
    """

    def __init__(
        self,
        terms: Mapping[str, LossTerm] | None = None,
        weights: Mapping[str, float] | None = None,
        gather_across_processes: bool = _config_default("gather_contrastive_features"),
    ) -> None:
        super().__init__()
        terms = dict(terms) if terms is not None else {name: term() for name, term in LOSS_TERMS.items()}
        unknown = set(weights or {}) - set(terms)
        if unknown:
            raise ValueError(f"SADCLLoss: weights given for {sorted(unknown)}, which are not terms {list(terms)}.")
        self.terms = nn.ModuleDict(terms)
        self.weights = {name: float((weights or {}).get(name, term.default_weight())) for name, term in terms.items()}
        self.gather_across_processes = gather_across_processes

    def extra_repr(self) -> str:
        return f"weights={self.weights}, gather_across_processes={self.gather_across_processes}"

    @classmethod
    def from_config(cls, config: Any) -> SADCLLoss:
        """Every term of `LOSS_TERMS` from a `SADCLConfig`'s fields (`LossTerm.from_config`), weighted by its
        `{name}_weight`; a field the object lacks takes the default."""
        weights = {name: getattr(config, f"{name}_weight", term.default_weight()) for name, term in LOSS_TERMS.items()}
        return cls(
            terms={name: term.from_config(config) for name, term in LOSS_TERMS.items()},
            weights=weights,
            gather_across_processes=getattr(
                config, "gather_contrastive_features", _config_default("gather_contrastive_features")
            ),
        )

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        projected_label_features: torch.Tensor | None = None,
        projected_memory_bank: torch.Tensor | None = None,
        projected_prototypes: torch.Tensor | None = None,
    ) -> SADCLLossOutput:
        """
        Args:
            logits: `[batch_size, num_labels]` classifier outputs.
            labels: `[batch_size, num_labels]` multi-hot targets.
            projected_label_features: `[batch_size, num_labels, proj_dim]` projected label-level features (SSCL
                view 0 and the PSCL samples), or `None` for the classification loss only.
            projected_memory_bank: `[batch_size, num_labels, proj_dim]` projected memory-bank features (SSCL view 1).
            projected_prototypes: `[num_labels, proj_dim]` projected class prototypes.
        """
        inputs = {
            "logits": logits,
            "labels": labels,
            "projected_label_features": projected_label_features,
            "projected_memory_bank": projected_memory_bank,
            "projected_prototypes": projected_prototypes,
        }
        given = [inputs[name] is not None for name in CONTRASTIVE_INPUTS]
        if any(given) and not all(given):
            raise ValueError(
                f"SADCLLoss: {', '.join(f'`{name}`' for name in CONTRASTIVE_INPUTS)} must be given together (or all "
                "be None for the classification loss only)."
            )
        if all(given) and projected_memory_bank.shape != projected_label_features.shape:
            raise ValueError(
                "SADCLLoss: `projected_memory_bank` must have the shape of `projected_label_features` "
                f"{list(projected_label_features.shape)}, got {list(projected_memory_bank.shape)}."
            )
        contrastive_inputs = inputs
        if all(given) and self.gather_across_processes and _world_size() > 1:
            contrastive_inputs = dict(inputs)
            contrastive_inputs["projected_label_features"] = _all_gather_with_gradient(projected_label_features)
            contrastive_inputs["projected_memory_bank"] = _all_gather_with_gradient(projected_memory_bank)
            contrastive_inputs["labels"] = _all_gather_with_gradient(labels.detach())
        terms: dict[str, torch.Tensor] = {}
        loss = None
        for name, term in self.terms.items():
            term_inputs = contrastive_inputs if term.contrastive else inputs
            if any(term_inputs[key] is None for key in term.inputs):
                continue
            terms[name] = term.loss_from_inputs(term_inputs)
            weight = self.weights[name]
            weighted = terms[name] if weight == 1.0 else weight * terms[name]
            loss = weighted if loss is None else loss + weighted
        return SADCLLossOutput(loss=loss, terms=terms)
