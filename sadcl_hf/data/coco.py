"""MS-COCO 2014 / 2017 as a multi-label classification dataset (80 categories)."""

from __future__ import annotations

import json
import os

import datasets

from .common import DatasetLayoutError, build_multilabel_dataset, require_dir, require_file, select_splits

__all__ = ["COCO_SPLITS", "load_coco"]

COCO_SPLITS = ("train", "val")

_LAYOUT_HINT = (
    "`root` must be the COCO folder as distributed: `annotations/instances_{{split}}{year}.json` "
    "(from annotations_trainval{year}.zip) next to the image folders `train{year}/` and `val{year}/`."
)


def _load_split(
    root: str, split: str, year: int, drop_unlabeled: bool, skip_missing: bool, skip_unreadable: bool
) -> datasets.Dataset:
    hint = _LAYOUT_HINT.format(year=year)
    annotation_path = require_file(
        os.path.join(root, "annotations", f"instances_{split}{year}.json"), f"COCO {year} {split} annotations", hint
    )
    image_dir = require_dir(os.path.join(root, f"{split}{year}"), f"COCO {year} {split} image folder", hint)
    try:
        with open(annotation_path, encoding="utf-8") as handle:
            instances = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{annotation_path} is not valid JSON ({error}).") from error
    for key in ("images", "annotations", "categories"):
        if key not in instances:
            raise ValueError(f"{annotation_path} has no {key!r} list; expected a COCO instances file.")

    categories = sorted(instances["categories"], key=lambda category: int(category["id"]))
    class_names = [str(category["name"]) for category in categories]
    class_of_category = {int(category["id"]): index for index, category in enumerate(categories)}

    image_ids = [int(image["id"]) for image in instances["images"]]
    labels_of_image: dict[int, set] = {image_id: set() for image_id in image_ids}
    for annotation in instances["annotations"]:
        image_id, category_id = int(annotation["image_id"]), int(annotation["category_id"])
        if category_id not in class_of_category:
            raise ValueError(
                f"{annotation_path}: annotation {annotation.get('id')} has category_id {category_id}, "
                "which is not in 'categories'."
            )
        if image_id not in labels_of_image:
            raise ValueError(
                f"{annotation_path}: annotation {annotation.get('id')} refers to image_id {image_id}, "
                "which is not in 'images'."
            )
        labels_of_image[image_id].add(class_of_category[category_id])

    return build_multilabel_dataset(
        [os.path.join(image_dir, image["file_name"]) for image in instances["images"]],
        [labels_of_image[image_id] for image_id in image_ids],
        class_names,
        description=f"COCO {year} {split}",
        skip_missing=skip_missing,
        skip_unreadable=skip_unreadable,
        drop_unlabeled=drop_unlabeled,
    )


def load_coco(
    root: str | os.PathLike,
    split: str | None = None,
    *,
    year: int = 2014,
    drop_unlabeled: bool = False,
    skip_missing: bool = False,
    skip_unreadable: bool = False,
) -> datasets.Dataset | datasets.DatasetDict:
    """Load MS-COCO (2014 or 2017) object annotations as multi-label image classification.

    Download (https://cocodataset.org/#download): `train{year}.zip`, `val{year}.zip` and
    `annotations_trainval{year}.zip`, unzipped side by side::

        root/
            annotations/instances_train2014.json
            annotations/instances_val2014.json
            train2014/COCO_train2014_000000000009.jpg ...
            val2014/COCO_val2014_000000000042.jpg ...

    An image's labels are the categories of all its instance annotations (crowd annotations included,
    as in ML-GCN / Query2Label). The classes are the 80 categories sorted by category id
    (`person`, `bicycle`, `car`, ...), the order used throughout the multi-label literature.

    Args:
        root: the COCO folder described above.
        split: `"train"` or `"val"`; `None` returns a `DatasetDict` with both.
        year: 2014 (the SADCL / Query2Label benchmark) or 2017.
        drop_unlabeled: drop images without any annotation (about 1% of COCO 2014). They are kept by default,
            with an empty label list.
        skip_missing: drop images whose file is missing (warning) instead of raising `FileNotFoundError`.
        skip_unreadable: decode every image first and drop the unreadable ones (warning); slow.

    Returns:
        `Dataset` (one split) or `DatasetDict`, columns `image` and `labels` (`List(ClassLabel)`).
    """
    if year not in (2014, 2017):
        raise ValueError(f"COCO year must be 2014 or 2017, got {year!r}.")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DatasetLayoutError(f"COCO root {root} is not a directory. {_LAYOUT_HINT.format(year=year)}")
    splits = select_splits(split, COCO_SPLITS, "COCO")
    loaded = {name: _load_split(root, name, year, drop_unlabeled, skip_missing, skip_unreadable) for name in splits}
    return loaded[split] if split is not None else datasets.DatasetDict(loaded)
