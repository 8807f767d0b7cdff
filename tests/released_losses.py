"""Dense re-implementations of the released SADCL losses (every `(B*V*K)^2` similarity), kept once: the tests
check `sadcl_hf.losses` against them and `scripts/benchmark.py losses` times them as the baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dense_released_sscl(
    features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.2, base_temperature: float = 0.2
) -> torch.Tensor:
    """Dense re-implementation of the released `MultiSupConLoss` (every `(B*V*K)^2` similarity), the baseline.

    features: `[B, V, K, D]`, labels: `[B, K]`. Reproduces the release's view-major/sample-major label-mask mix-up,
    its detached offsets and its `+1e-5` in the denominator.
    """
    batch_size, num_views, num_labels, dim = features.shape
    num_rows = num_views * batch_size
    num_features = num_rows * num_labels
    labels = labels.to(features.dtype)
    contrast = F.normalize(features, dim=-1).transpose(0, 1).reshape(num_features, dim)  # (v*B + b)*K + c
    row_labels = labels.repeat(num_views, 1)  # [V*B, K]
    feature_labels = row_labels.reshape(num_features)
    anchor_mask = labels.repeat_interleave(num_views, dim=0).reshape(num_features)  # the release's sample-major mask

    similarity = contrast @ contrast.T / temperature  # [N, N]
    pair_mask = (feature_labels[:, None] * feature_labels[None, :]).fill_diagonal_(0)
    masked = similarity * pair_mask
    denominator = (pair_mask * torch.exp(masked - masked.amax(1, keepdim=True).detach())).sum(1)
    denominator = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    log_denominator = anchor_mask * torch.log(denominator + 1e-5)

    intra = torch.diagonal(similarity.view(num_rows, num_labels, num_rows, num_labels), dim1=1, dim2=3)  # [R, R, K]
    not_self = 1 - torch.eye(num_rows, dtype=features.dtype, device=features.device)
    intra_mask = row_labels[:, None, :] * row_labels[None, :, :] * not_self[:, :, None]
    masked_intra = intra * intra_mask
    numerator = masked_intra - masked_intra.amax(2, keepdim=True).detach()  # max over classes
    numerator = numerator.permute(0, 2, 1).reshape(num_features, num_rows)
    intra_mask = intra_mask.permute(0, 2, 1).reshape(num_features, num_rows)
    log_prob = (intra_mask * (numerator - log_denominator[:, None])).sum(1) / intra_mask.sum(1).clamp(min=1)
    anchor_losses = -(temperature / base_temperature) * log_prob * anchor_mask
    return anchor_losses.sum() / anchor_mask.sum().clamp(min=1)


def dense_released_pscl(
    embeddings: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """Re-implementation of the released `Semantic2PrototypeConLoss` (prototypes repeated over the batch)."""
    batch_size, num_labels, dim = embeddings.shape
    repeated = prototypes.reshape(1, num_labels, dim).repeat(batch_size, 1, 1)
    cosine = F.cosine_similarity(embeddings, repeated, dim=-1).T / temperature  # [K, B]
    cosine = cosine - cosine.amax(1, keepdim=True).detach()
    positive = labels.T.to(embeddings.dtype)
    log_denominator = torch.log(torch.exp(cosine).sum(1))
    numerator = (torch.exp(cosine * positive) * positive).sum(1)
    log_numerator = torch.log(torch.where(numerator > 0, numerator, torch.ones_like(numerator)))
    return -(log_numerator - log_denominator).sum() / positive.sum()
