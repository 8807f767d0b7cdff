"""One entry point for every supported multi-label dataset: [`load_multilabel_dataset`]."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import datasets

from ..configuration_sadcl import COCO_LABELS, DIGIT_CLASSES, NUS_WIDE_CONCEPTS, VOC_CLASSES
from .coco import COCO_SPLITS, load_coco
from .digits_mosaic import DIGITS_MOSAIC_SPLITS, load_digits_mosaic
from .folder import load_folder
from .nuswide import NUS_WIDE_SPLITS, load_nuswide
from .vg500 import VG500_LABEL_FILE, VG500_SPLITS, load_vg500
from .voc import VOC_SPLITS, load_voc

__all__ = ["DATASETS", "DATASET_NAMES", "DATASET_SPLITS", "DatasetInfo", "dataset_info", "load_multilabel_dataset"]


@dataclass(frozen=True)
class DatasetInfo:
    """What sadcl-hf knows of one dataset name: the one registry behind training, the scripts, the converter and
    the model card.

    Args:
        name: the registry key (`load_multilabel_dataset(name, ...)`).
        display_name: how the model card names it.
        load: `load(root, split, **options)` -> `Dataset` / `DatasetDict`.
        splits: the splits it has; `None` when they depend on the data (a custom folder).
        train_split / eval_split: the benchmark's training and evaluation splits.
        label_names: the canonical class names in the released order, when fixed by the benchmark.
        label_file: where the class names come from otherwise (a hint for error messages and docs).
        needs_root: whether it is read from a folder (`False`: built from data a package ships).
    """

    name: str
    display_name: str
    load: Callable[..., Any]
    splits: tuple[str, ...] | None
    train_split: str = "train"
    eval_split: str = "validation"
    label_names: tuple[str, ...] | None = None
    label_file: str | None = None
    needs_root: bool = True


def _digits_mosaic(root: Any, split: str | None, **options: Any):
    if root is not None:
        raise ValueError("'digits-mosaic' is generated from data bundled with scikit-learn and takes no root.")
    return load_digits_mosaic(split, **options)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "coco2014", "MS-COCO 2014", partial(load_coco, year=2014), COCO_SPLITS, "train", "val", tuple(COCO_LABELS)
        ),
        DatasetInfo(
            "coco2017", "MS-COCO 2017", partial(load_coco, year=2017), COCO_SPLITS, "train", "val", tuple(COCO_LABELS)
        ),
        DatasetInfo(
            "voc2007",
            "PASCAL VOC 2007",
            partial(load_voc, year=2007),
            VOC_SPLITS[2007],
            "trainval",
            "test",
            VOC_CLASSES,
        ),
        DatasetInfo(
            "voc2012", "PASCAL VOC 2012", partial(load_voc, year=2012), VOC_SPLITS[2012], "train", "val", VOC_CLASSES
        ),
        DatasetInfo("nuswide", "NUS-WIDE", load_nuswide, NUS_WIDE_SPLITS, "train", "test", NUS_WIDE_CONCEPTS),
        DatasetInfo(
            "vg500",
            "Visual Genome 500 (VG-500)",
            load_vg500,
            VG500_SPLITS,
            "train",
            "test",
            label_file=VG500_LABEL_FILE,
        ),
        DatasetInfo(
            "digits-mosaic",
            "digits-mosaic (synthetic mosaics of scikit-learn's handwritten digits)",
            _digits_mosaic,
            DIGITS_MOSAIC_SPLITS,
            label_names=DIGIT_CLASSES,
            needs_root=False,
        ),
        DatasetInfo("folder", "a custom image folder", load_folder, None, label_file="metadata file"),
    )
}
DATASET_NAMES = tuple(DATASETS)
DATASET_SPLITS: dict[str, tuple[str, ...] | None] = {name: info.splits for name, info in DATASETS.items()}
_ALIASES = {"nus-wide": "nuswide", "vg-500": "vg500"}


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of `name` (case-insensitive; `_` and `-` are interchangeable; `nus-wide`, `vg-500`)."""
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; available: {', '.join(DATASET_NAMES)}.")
    return DATASETS[key]


def load_multilabel_dataset(
    name: str, root: str | os.PathLike | None = None, split: str | None = None, **options: Any
) -> datasets.Dataset | datasets.DatasetDict:
    """Load a multi-label image dataset by name (a `DATASETS` entry).

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
        **options: forwarded to the loader (e.g. `difficult="positive"` for VOC, `drop_unlabeled=True`,
            `skip_missing=True`, `cache_dir=...` for digits-mosaic).

    Returns:
        `Dataset` or `DatasetDict` with columns `image` (`datasets.Image`) and `labels`
        (`List(ClassLabel(names=...))`), plus loader-specific extras documented by each loader.
    """
    info = dataset_info(name)
    if split is not None and info.splits is not None and split not in info.splits:
        raise ValueError(f"Unknown split {split!r} for {info.name!r}; expected one of {list(info.splits)}.")
    if info.needs_root and root is None:
        raise ValueError(f"Dataset {info.name!r} needs root=<the folder of the dataset as distributed>.")
    return info.load(root, split, **options)
