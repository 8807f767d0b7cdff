"""Shared pieces of the multi-label loaders: the output schema, layout checks and image checks.

Every loader returns rows of the same schema:

* `image`: `datasets.Image()` (decoded lazily to a `PIL.Image.Image` when a row is read);
* `labels`: `datasets.List(datasets.ClassLabel(names=...))`, the ids of the classes present in the image;

so the class names travel with the data: `ds.features["labels"].feature.names`, or [`label_names`].
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import datasets
from tqdm.auto import tqdm

from .images import ImageLoadError, load_image

__all__ = [
    "select_splits",
    "DatasetLayoutError",
    "build_multilabel_dataset",
    "dataset_label_names",
    "multilabel_features",
    "require_dir",
    "require_file",
]

logger = logging.getLogger(__name__)

AnyDataset = datasets.Dataset | datasets.DatasetDict | datasets.IterableDataset | datasets.IterableDatasetDict


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder does not have the expected on-disk layout (the message says which file was expected where)."""


def require_file(path: str, what: str, hint: str = "") -> str:
    """Return `path` if it is an existing file, else raise [`DatasetLayoutError`] naming `what` was expected there."""
    if os.path.isfile(path):
        return path
    message = f"Expected the {what} at {path}, but there is no such file."
    if hint:
        message += f" {hint}"
    raise DatasetLayoutError(message)


def require_dir(path: str, what: str, hint: str = "") -> str:
    """Return `path` if it is an existing directory, else raise [`DatasetLayoutError`]."""
    if os.path.isdir(path):
        return path
    message = f"Expected the {what} at {path}, but there is no such directory."
    if hint:
        message += f" {hint}"
    raise DatasetLayoutError(message)


def select_splits(split: str | None, available: Sequence[str], dataset: str) -> tuple[str, ...]:
    """The splits to load: `(split,)`, or all of `available` when `split` is None; an unknown split is an error
    naming the dataset and the choices."""
    if split is None:
        return tuple(available)
    if split not in available:
        raise ValueError(f"Unknown {dataset} split {split!r}; expected one of {list(available)}.")
    return (split,)


def multilabel_features(class_names: Sequence[str]) -> datasets.Features:
    """The `datasets.Features` of a multi-label image dataset over `class_names` (in class-id order)."""
    class_names = list(class_names)
    if len(set(class_names)) != len(class_names):
        duplicates = sorted({name for name in class_names if class_names.count(name) > 1})
        raise ValueError(f"Class names must be unique, found duplicates: {duplicates}")
    class_label = datasets.ClassLabel(names=class_names)
    return datasets.Features({"image": datasets.Image(), "labels": datasets.List(class_label)})


def dataset_label_names(dataset: AnyDataset) -> list[str]:
    """The class names (index = class id) of a multi-label dataset produced by the sadcl-hf loaders.

    Args:
        dataset: a `Dataset`, `DatasetDict` (all splits must agree) or their iterable variants whose `labels`
            column is `List(ClassLabel(names=...))`.
    """
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if len(dataset) == 0:
            raise ValueError("The DatasetDict has no splits.")
        per_split = {split: dataset_label_names(part) for split, part in dataset.items()}
        first_split, names = next(iter(per_split.items()))
        for split, other in per_split.items():
            if other != names:
                raise ValueError(f"Splits {first_split!r} and {split!r} have different class names.")
        return names
    features = dataset.features
    if features is None or "labels" not in features:
        raise ValueError("Expected a 'labels' column of type List(ClassLabel(names=...)); the dataset has none.")
    labels_feature = features["labels"]
    inner = getattr(labels_feature, "feature", None)
    if not isinstance(inner, datasets.ClassLabel):
        raise ValueError(
            f"Expected the 'labels' column to be List(ClassLabel(names=...)), got {labels_feature}. "
            "Convert it with sadcl_hf.data.from_hub_dataset(...)."
        )
    return list(inner.names)


def _missing_paths(paths: Sequence[str]) -> list[int]:
    """Indices of `paths` absent from their folder (one directory listing per folder, not one stat per file)."""
    listings: dict[str, set | None] = {}
    missing = []
    for index, path in enumerate(paths):
        folder, name = os.path.split(path)
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(folder or "."))
            except OSError:
                listings[folder] = None
        listing = listings[folder]
        if listing is None or name not in listing:
            missing.append(index)
    return missing


def _unreadable_paths(paths: Sequence[str], description: str) -> list[tuple[int, str]]:
    failures = []
    for index, path in enumerate(tqdm(paths, desc=f"Verifying {description} images", unit="img", leave=False)):
        try:
            load_image(path)
        except ImageLoadError as error:
            failures.append((index, error.reason))
    return failures


def build_multilabel_dataset(
    image_paths: Sequence[str],
    label_ids: Sequence[Iterable[int]],
    class_names: Sequence[str],
    *,
    description: str,
    skip_missing: bool = False,
    skip_unreadable: bool = False,
    drop_unlabeled: bool = False,
) -> datasets.Dataset:
    """Build a [`multilabel_features`] `Dataset` from image paths and per-image class ids.

    Args:
        image_paths: one image file path per row (made absolute).
        label_ids: per row, the ids (into `class_names`) of the classes present; sorted and de-duplicated here.
        class_names: class names in id order.
        description: what the rows are (e.g. `"COCO 2014 train"`), used in messages.
        skip_missing: drop rows whose image file does not exist (with a warning) instead of raising.
        skip_unreadable: decode every image and drop those that fail (with a warning); slow on large datasets.
        drop_unlabeled: drop rows without any label.
    """
    if len(image_paths) != len(label_ids):
        raise ValueError(f"{description}: {len(image_paths)} images but {len(label_ids)} label lists.")
    num_classes = len(class_names)
    paths = [os.path.abspath(os.fspath(path)) for path in image_paths]
    labels = []
    for row, ids in enumerate(label_ids):
        ids = sorted({int(i) for i in ids})
        if ids and (ids[0] < 0 or ids[-1] >= num_classes):
            raise ValueError(f"{description}: image {paths[row]} has class id(s) outside [0, {num_classes}): {ids}")
        labels.append(ids)

    keep = list(range(len(paths)))
    if drop_unlabeled:
        before = len(keep)
        keep = [row for row in keep if labels[row]]
        if before != len(keep):
            logger.info("%s: dropped %d image(s) without labels.", description, before - len(keep))

    missing = [keep[i] for i in _missing_paths([paths[row] for row in keep])]
    if missing:
        examples = ", ".join(paths[row] for row in missing[:3])
        if not skip_missing:
            raise FileNotFoundError(
                f"{description}: {len(missing)} of {len(keep)} image file(s) are missing, e.g. {examples}. "
                "Check the dataset root, or pass skip_missing=True to drop them."
            )
        logger.warning("%s: skipped %d missing image file(s), e.g. %s", description, len(missing), examples)
        missing_set = set(missing)
        keep = [row for row in keep if row not in missing_set]

    if skip_unreadable:
        failures = _unreadable_paths([paths[row] for row in keep], description)
        if failures:
            examples = "; ".join(f"{paths[keep[i]]} ({reason})" for i, reason in failures[:3])
            logger.warning("%s: skipped %d unreadable image(s), e.g. %s", description, len(failures), examples)
            failed = {keep[i] for i, _ in failures}
            keep = [row for row in keep if row not in failed]

    columns = {"image": [paths[row] for row in keep], "labels": [labels[row] for row in keep]}
    features = multilabel_features(class_names)
    info = datasets.DatasetInfo(description=description, features=features)
    return datasets.Dataset.from_dict(columns, features=features, info=info)
