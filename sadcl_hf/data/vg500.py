"""Visual Genome 500 (the SSGRL / Query2Label split of the 500 most frequent object categories)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import datasets

from .common import DatasetLayoutError, build_multilabel_dataset, select_splits

__all__ = ["VG500_NUM_CLASSES", "VG500_SPLITS", "load_vg500"]

VG500_NUM_CLASSES = 500
VG500_SPLITS = ("train", "test")

_SPLIT_FILES = {"train": "train_list_500.txt", "test": "test_list_500.txt"}
VG500_LABEL_FILE = "vg_category_500_labels_index.json"
_NAME_FILES = ("vg_category_500.json", "vg_category_500.txt")
_PARTITION_DIRS = ("", "ssgrl_partition", "VG")
_IMAGE_DIRS = ("VG_100K", "VG_100K_2")


def _find_partition_dir(root: str) -> str:
    for sub in _PARTITION_DIRS:
        folder = os.path.join(root, sub)
        if os.path.isfile(os.path.join(folder, VG500_LABEL_FILE)):
            return folder
    tried = ", ".join(os.path.join(root, sub, VG500_LABEL_FILE) for sub in _PARTITION_DIRS)
    raise DatasetLayoutError(
        f"Expected the VG500 label file {VG500_LABEL_FILE} (from the SSGRL release) at one of: {tried}. "
        f"It must sit next to {_SPLIT_FILES['train']} and {_SPLIT_FILES['test']}."
    )


def _class_names(partition_dir: str, explicit: Sequence[str] | None) -> list[str]:
    if explicit is not None:
        names = [str(name) for name in explicit]
        if len(names) != VG500_NUM_CLASSES:
            raise ValueError(f"label_names must have {VG500_NUM_CLASSES} entries, got {len(names)}.")
        return names
    for file_name in _NAME_FILES:
        path = os.path.join(partition_dir, file_name)
        if not os.path.isfile(path):
            continue
        if file_name.endswith(".json"):
            with open(path, encoding="utf-8") as handle:
                content = json.load(handle)
            if isinstance(content, dict):
                try:
                    ordered = sorted(content.items(), key=lambda item: int(item[1]))
                except (TypeError, ValueError) as error:
                    raise ValueError(f"{path}: expected a {{name: class_id}} mapping or a list of names.") from error
                if [int(index) for _, index in ordered] != list(range(VG500_NUM_CLASSES)):
                    raise ValueError(f"{path}: class ids must be exactly 0..{VG500_NUM_CLASSES - 1}.")
                names = [str(name) for name, _ in ordered]
            else:
                names = [str(name) for name in content]
        else:
            with open(path, encoding="utf-8") as handle:
                names = [line.strip() for line in handle if line.strip()]
        if len(names) != VG500_NUM_CLASSES:
            raise ValueError(f"{path} should name {VG500_NUM_CLASSES} categories, found {len(names)}.")
        return names
    return [str(index) for index in range(VG500_NUM_CLASSES)]


def _resolve_image(name: str, image_dirs: Sequence[str]) -> str:
    for folder in image_dirs:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    return os.path.join(image_dirs[0], name)


def load_vg500(
    root: str | os.PathLike,
    split: str | None = None,
    *,
    image_dir: str | os.PathLike | None = None,
    label_names: Sequence[str] | None = None,
    skip_missing: bool = False,
    skip_unreadable: bool = False,
) -> datasets.Dataset | datasets.DatasetDict:
    """Load Visual Genome 500, the multi-label split of SSGRL (ICCV 2019) used by Query2Label and SADCL.

    Download: the images `images.zip` and `images2.zip` from https://visualgenome.org (they unzip to
    `VG_100K/` and `VG_100K_2/`), and the split files `train_list_500.txt`, `test_list_500.txt` and
    `vg_category_500_labels_index.json` from https://github.com/HCPLab-SYSU/SSGRL (`data/VG/`)::

        root/
            train_list_500.txt                   one image file name per line ("2328403.jpg")
            test_list_500.txt
            vg_category_500_labels_index.json    {"2328403.jpg": [3, 17, 256], ...}: class ids in [0, 500)
            vg_category_500.json                 (optional) category names: a list, or {name: class_id}
            VG_100K/2328403.jpg ...              (an image is looked up in VG_100K/, then VG_100K_2/)
            VG_100K_2/...

    The three split files may also sit in `root/ssgrl_partition/` or `root/VG/`. The SSGRL release does not ship
    category names: without `vg_category_500.json` (or `vg_category_500.txt`, one name per line) or `label_names`,
    the classes are named `"0"` ... `"499"` in class-id order.

    Args:
        root: the Visual Genome folder described above.
        split: `"train"` or `"test"`; `None` returns both.
        image_dir: a single image folder to use instead of `VG_100K/` + `VG_100K_2/`.
        label_names: the 500 category names in class-id order.
        skip_missing: drop images whose file is missing (warning) instead of raising `FileNotFoundError`.
        skip_unreadable: decode every image first and drop the unreadable ones (warning); slow.
    """
    root = os.fspath(root)
    splits = select_splits(split, VG500_SPLITS, "VG500")
    partition_dir = _find_partition_dir(root)
    label_path = os.path.join(partition_dir, VG500_LABEL_FILE)
    with open(label_path, encoding="utf-8") as handle:
        labels_of_image = json.load(handle)
    if not isinstance(labels_of_image, dict):
        raise ValueError(f"{label_path}: expected a JSON object mapping image file names to lists of class ids.")
    class_names = _class_names(partition_dir, label_names)
    image_dirs = [os.fspath(image_dir)] if image_dir is not None else [os.path.join(root, sub) for sub in _IMAGE_DIRS]

    loaded = {}
    for name in splits:
        list_path = os.path.join(partition_dir, _SPLIT_FILES[name])
        if not os.path.isfile(list_path):
            raise DatasetLayoutError(f"Expected the VG500 {name} image list at {list_path}, but there is no such file.")
        with open(list_path, encoding="utf-8") as handle:
            image_names = [line.strip() for line in handle if line.strip()]
        labels = []
        for image_name in image_names:
            if image_name not in labels_of_image:
                raise ValueError(f"{list_path} lists {image_name}, which has no entry in {label_path}.")
            ids = labels_of_image[image_name]
            if not isinstance(ids, list) or any(
                not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < VG500_NUM_CLASSES for i in ids
            ):
                raise ValueError(
                    f"{label_path}: labels of {image_name} must be a list of integer class ids in "
                    f"[0, {VG500_NUM_CLASSES}), got {ids!r}."
                )
            labels.append(ids)
        loaded[name] = build_multilabel_dataset(
            [_resolve_image(image_name, image_dirs) for image_name in image_names],
            labels,
            class_names,
            description=f"VG500 {name}",
            skip_missing=skip_missing,
            skip_unreadable=skip_unreadable,
        )
    return loaded[split] if split is not None else datasets.DatasetDict(loaded)
