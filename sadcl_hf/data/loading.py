"""One entry point for every supported multi-label dataset: [`load_multilabel_dataset`]."""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

import datasets

from .coco import load_coco
from .digits_mosaic import load_digits_mosaic
from .folder import load_folder
from .nuswide import load_nuswide
from .voc import load_voc
from .vg500 import load_vg500


__all__ = ["DATASET_NAMES", "DATASET_SPLITS", "load_multilabel_dataset"]

DATASET_SPLITS: dict[str, Optional[tuple[str, ...]]] = {
    "coco2014": ("train", "val"),
    "coco2017": ("train", "val"),
    "voc2007": ("trainval", "test"),
    "voc2012": ("train", "val", "trainval"),
    "nuswide": ("train", "test"),
    "vg500": ("train", "test"),
    "digits-mosaic": ("train", "validation", "test"),
    "folder": None,  # whatever split folders the custom folder has
}
DATASET_NAMES = tuple(DATASET_SPLITS)

_LOADERS: dict[str, Callable[..., Any]] = {
    "coco2014": lambda root, split, **options: load_coco(root, split, year=2014, **options),
    "coco2017": lambda root, split, **options: load_coco(root, split, year=2017, **options),
    "voc2007": lambda root, split, **options: load_voc(root, split, year=2007, **options),
    "voc2012": lambda root, split, **options: load_voc(root, split, year=2012, **options),
    "nuswide": load_nuswide,
    "vg500": load_vg500,
    "folder": load_folder,
}


def load_multilabel_dataset(
    name: str, root: Optional[Union[str, os.PathLike]] = None, split: Optional[str] = None, **options: Any
) -> Union[datasets.Dataset, datasets.DatasetDict]:
    """Load a multi-label image dataset by name.

    | name              | splits                      | loader                  |
    |-------------------|-----------------------------|-------------------------|
    | `"coco2014"`      | `train`, `val`              | [`load_coco`] (year=2014) |
    | `"coco2017"`      | `train`, `val`              | [`load_coco`] (year=2017) |
    | `"voc2007"`       | `trainval`, `test`          | [`load_voc`] (year=2007)  |
    | `"voc2012"`       | `train`, `val`, `trainval`  | [`load_voc`] (year=2012)  |
    | `"nuswide"`       | `train`, `test`             | [`load_nuswide`]        |
    | `"vg500"`         | `train`, `test`             | [`load_vg500`]          |
    | `"digits-mosaic"` | `train`, `validation`, `test` | [`load_digits_mosaic`] (no `root`) |
    | `"folder"`        | the folder's splits         | [`load_folder`]         |

    Args:
        name: one of the names above (case-insensitive; `_` and `-` are interchangeable).
        root: the dataset's own folder as distributed (see each loader); not used by `"digits-mosaic"`.
        split: one split, or `None` for a `DatasetDict` of all splits.
        **options: forwarded to the loader (e.g. `difficult="ignore"` for VOC, `drop_unlabeled=True`,
            `skip_missing=True`, `cache_dir=...` for digits-mosaic).

    Returns:
        `Dataset` or `DatasetDict` with columns `image` (`datasets.Image`) and `labels`
        (`List(ClassLabel(names=...))`), plus loader-specific extras documented by each loader.
    """
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    key = {"nus-wide": "nuswide", "vg-500": "vg500"}.get(key, key)
    if key not in DATASET_SPLITS:
        raise ValueError(f"Unknown dataset {name!r}; available: {', '.join(DATASET_NAMES)}.")
    allowed = DATASET_SPLITS[key]
    if split is not None and allowed is not None and split not in allowed:
        raise ValueError(f"Unknown split {split!r} for {key!r}; expected one of {list(allowed)}.")
    if key == "digits-mosaic":
        if root is not None:
            raise ValueError("'digits-mosaic' is generated from data bundled with scikit-learn and takes no root.")
        return load_digits_mosaic(split, **options)
    if root is None:
        raise ValueError(f"Dataset {key!r} needs root=<the folder of the dataset as distributed>.")
    return _LOADERS[key](root, split, **options)
