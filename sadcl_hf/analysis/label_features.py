"""What the dual contrastive terms do to the label-level features: the SADCL paper's t-SNE pictures and two numbers.

The paper (Ma et al., ECAI 2023, Fig. 4 and 5) shows t-SNE plots of 2,000 label-level features of the classes present
in test images, without and with SSCL + PSCL, and the learned prototypes among them: with dual contrastive learning
the features of a class gather more tightly. Here:

* [`collect_label_features`] runs a model over a split and keeps, per image, the label-level feature
  `label_features[b, k]` [D] (and its projection [P]) of every class `k` present in the image;
* [`separation_scores`] measures how well those features group by class: the silhouette score with the cosine
  distance, and the mean cosine similarity between features of the same class minus the mean between features of
  different classes (both in [-1, 1] up to rounding; higher = tighter, better separated classes);
* [`analyze_label_features`] does both and fits the t-SNE embeddings; [`plot_label_features`] draws one figure per
  model: (1) the label-level features coloured by class, (2) the projected features, (3) the class prototypes in the
  embedding of (1) (fitted on the features and the prototypes jointly).

Plotting needs matplotlib (`pip install "sadcl-hf[viz]"`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..image_processing import evaluation_dataloader

__all__ = [
    "FeatureAnalysis",
    "LabelFeatures",
    "analyze_label_features",
    "collect_label_features",
    "plot_label_features",
    "separation_scores",
    "tsne_embedding",
]

DEFAULT_MAX_FEATURES = 2000


@dataclass
class LabelFeatures:
    """Label-level features of the classes present in a split's images, in image order (then class order).

    Attributes:
        features: [N, D] raw label-level features (`SADCLForImageClassification(...).label_features[b, k]`).
        projected: [N, P] the same through the projector (the space SSCL and PSCL compare in).
        classes: [N] int64 class index of each feature.
        prototypes: [K, D] the model's class prototypes.
        label_names: K class names.
        num_images: images scored to collect the N features.
    """

    features: np.ndarray
    projected: np.ndarray
    classes: np.ndarray
    prototypes: np.ndarray
    label_names: list[str]
    num_images: int


@dataclass
class FeatureAnalysis:
    """[`LabelFeatures`], their [`separation_scores`] and (optionally) t-SNE embeddings.

    Attributes:
        features: the collected features.
        scores: `{"silhouette", "separation", "same_class_cosine", "different_class_cosine"}` of the raw features,
            and the same four with a `projected_` prefix for the projected features.
        embedding: [N + K, 2] t-SNE of the raw features and the prototypes (fitted jointly; prototypes last).
        projected_embedding: [N, 2] t-SNE of the projected features.
        prototypes_trained: False for a baseline model (`objective="asl"`), whose prototypes are never trained.
    """

    features: LabelFeatures
    scores: dict[str, float]
    embedding: np.ndarray | None = None
    projected_embedding: np.ndarray | None = None
    prototypes_trained: bool = True


@torch.no_grad()
def collect_label_features(
    model,
    dataset,
    max_features: int | None = DEFAULT_MAX_FEATURES,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = None,
) -> LabelFeatures:
    """The label-level features [N, D] and projected features [N, P] of the classes present in `dataset`'s images.

    Args:
        model: a `SADCLForImageClassification` (its output has `label_features` [B, K, D] and
            `projected_label_features` [B, K, P]); scored in eval mode, its mode is restored afterwards.
        dataset: a split with `image` and `labels` (class ids) columns, e.g.
            `load_multilabel_dataset("digits-mosaic", split="test")`.
        max_features: stop after this many features (the first images of the split); `None` keeps them all.
        batch_size / num_workers: loader settings.
        device: where to run the model (default: where it is).

    Raises:
        ValueError: `max_features` below 2, or the split has no labelled image.
    """
    if max_features is not None and (isinstance(max_features, bool) or int(max_features) < 2):
        raise ValueError(f"max_features must be at least 2 (or None for all), got {max_features!r}")
    loader = evaluation_dataloader(model.config, dataset, batch_size=batch_size, num_workers=num_workers)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.to(device).eval()
    features, projected, classes = [], [], []
    count = num_images = 0
    try:
        for batch in loader:
            outputs = model(pixel_values=batch["pixel_values"].to(device, dtype=model.dtype))
            image_index, class_index = torch.nonzero(batch["labels"] > 0.5, as_tuple=True)  # image-major order
            remaining = None if max_features is None else max_features - count
            full = remaining is not None and len(class_index) >= remaining
            if full:
                image_index, class_index = image_index[:remaining], class_index[:remaining]
            features.append(outputs.label_features[image_index, class_index].float().cpu())
            projected.append(outputs.projected_label_features[image_index, class_index].float().cpu())
            classes.append(class_index)
            count += len(class_index)
            num_images += int(image_index[-1]) + 1 if full else len(batch["labels"])
            if full:
                break
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the dataset has no image with a label: there are no label-level features to collect")
    return LabelFeatures(
        features=torch.cat(features).numpy(),
        projected=torch.cat(projected).numpy(),
        classes=torch.cat(classes).numpy().astype(np.int64),
        prototypes=model.prototypes.detach().float().cpu().numpy(),
        label_names=model.config.label_names,
        num_images=num_images,
    )


def _normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def separation_scores(features: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """How well features [N, D] group by their classes [N].

    Returns:
        `silhouette`: mean silhouette coefficient with the cosine distance (`sklearn.metrics.silhouette_score`);
        `same_class_cosine` / `different_class_cosine`: mean cosine similarity over the pairs (i != j) of features
        of the same class / of different classes; `separation`: the first minus the second.

    Raises:
        ValueError: fewer than 2 classes, or every class has a single feature (no same-class pair).
    """
    from sklearn.metrics import silhouette_score

    features = _normalize(features)
    classes = np.asarray(classes)
    if features.ndim != 2 or classes.shape != (features.shape[0],):
        raise ValueError(f"expected features [N, D] and classes [N], got {features.shape} and {classes.shape}")
    present, counts = np.unique(classes, return_counts=True)
    if len(present) < 2 or len(present) >= len(classes):
        raise ValueError(
            f"separation needs at least 2 classes and a class with 2 features; got {len(classes)} features of "
            f"{len(present)} classes"
        )
    # Sum of cosines over ordered pairs i != j: |sum of unit vectors|^2 - N (the diagonal), per class and overall.
    total = features.sum(axis=0)
    all_pairs = float(total @ total) - len(features)
    class_sums = np.stack([features[classes == c].sum(axis=0) for c in present])
    same_pairs = float((class_sums**2).sum()) - len(features)
    num_same = float((counts * (counts - 1)).sum())
    num_different = float(len(features) * (len(features) - 1)) - num_same
    same = same_pairs / num_same
    different = (all_pairs - same_pairs) / num_different
    return {
        "silhouette": float(silhouette_score(features, classes, metric="cosine")),
        "separation": same - different,
        "same_class_cosine": same,
        "different_class_cosine": different,
    }


def tsne_embedding(vectors: np.ndarray, seed: int = 0, perplexity: float = 30.0, max_iter: int = 1000) -> np.ndarray:
    """2-D t-SNE (`sklearn.manifold.TSNE`, PCA initialisation) of L2-normalised vectors [N, D] -> [N, 2]; on unit
    vectors the Euclidean distance is a function of the cosine similarity, the losses' measure."""
    from sklearn.manifold import TSNE

    vectors = _normalize(vectors)
    if len(vectors) < 3:
        raise ValueError(f"t-SNE needs at least 3 vectors, got {len(vectors)}")
    perplexity = min(perplexity, (len(vectors) - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=max_iter)
    return tsne.fit_transform(vectors).astype(np.float32)


def analyze_label_features(
    model,
    dataset,
    max_features: int | None = DEFAULT_MAX_FEATURES,
    batch_size: int = 128,
    with_tsne: bool = True,
    seed: int = 0,
    tsne_max_iter: int = 1000,
) -> FeatureAnalysis:
    """[`collect_label_features`], their [`separation_scores`] (raw and projected), and with `with_tsne` the
    embeddings that [`plot_label_features`] draws."""
    collected = collect_label_features(model, dataset, max_features=max_features, batch_size=batch_size)
    scores = separation_scores(collected.features, collected.classes)
    scores.update({f"projected_{k}": v for k, v in separation_scores(collected.projected, collected.classes).items()})
    analysis = FeatureAnalysis(
        features=collected, scores=scores, prototypes_trained=getattr(model.config, "objective", "sadcl") != "asl"
    )
    if with_tsne:
        joint = np.concatenate([collected.features, collected.prototypes])
        analysis.embedding = tsne_embedding(joint, seed=seed, max_iter=tsne_max_iter)
        analysis.projected_embedding = tsne_embedding(collected.projected, seed=seed, max_iter=tsne_max_iter)
    return analysis


def _class_colours(num_classes: int) -> np.ndarray:
    import matplotlib

    name = "tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo"
    colormap = matplotlib.colormaps[name]
    if name == "turbo":
        return colormap(np.linspace(0.0, 1.0, num_classes))
    return colormap(np.arange(num_classes) % colormap.N)


def plot_label_features(analysis: FeatureAnalysis, path: str | os.PathLike, title: str = "") -> Path:
    """Writes one PNG of three panels: (1) label-level features, (2) projected features, (3) prototypes (stars) in
    the embedding of (1) over its faded features; points coloured by class, the separation numbers in the titles.

    Raises:
        ValueError: the analysis was made without t-SNE (`with_tsne=False`).
        ImportError: matplotlib is missing.
    """
    if analysis.embedding is None or analysis.projected_embedding is None:
        raise ValueError("the analysis has no t-SNE embedding; run analyze_label_features(..., with_tsne=True)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError('plotting label features needs matplotlib: pip install "sadcl-hf[viz]"') from error

    collected = analysis.features
    names = collected.label_names
    colours = _class_colours(len(names))
    num_features = len(collected.classes)
    points, prototypes = analysis.embedding[:num_features], analysis.embedding[num_features:]
    scores = analysis.scores
    prototype_title = "(3) prototypes" + ("" if analysis.prototypes_trained else " (untrained: ASL-only model)")
    panels = [
        (f"(1) label-level features\nsilhouette {scores['silhouette']:.3f}, separation {scores['separation']:.3f}",
         points, 1.0),
        ("(2) projected features\nsilhouette "
         f"{scores['projected_silhouette']:.3f}, separation {scores['projected_separation']:.3f}",
         analysis.projected_embedding, 1.0),
        (prototype_title + "\nin the embedding of (1)", points, 0.15),
    ]  # fmt: skip
    figure, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    for axis, (panel_title, embedding, alpha) in zip(axes, panels):
        axis.scatter(embedding[:, 0], embedding[:, 1], c=colours[collected.classes], s=4, alpha=alpha, linewidths=0)
        axis.set_title(panel_title, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_aspect("equal", adjustable="datalim")
    axes[2].scatter(
        prototypes[:, 0], prototypes[:, 1], c=colours, s=220, marker="*", edgecolors="black", linewidths=0.8
    )
    if len(names) <= 20:
        for k, (x, y) in enumerate(prototypes):
            axes[2].annotate(names[k], (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8)
        handles = [
            plt.Line2D([], [], marker="o", linestyle="", color=colours[k], label=names[k]) for k in range(len(names))
        ]
        figure.legend(handles=handles, loc="lower center", ncol=min(len(names), 10), frameon=False, fontsize=9)
    figure.suptitle(
        f"{title}\n{num_features} label-level features of present classes ({collected.num_images} images)".strip(),
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0.06 if len(names) <= 20 else 0, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
