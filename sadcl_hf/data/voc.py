"""PASCAL VOC 2007 / 2012 as a multi-label classification dataset (20 classes)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree

import datasets

from ..configuration_sadcl import VOC_CLASSES
from .common import DatasetLayoutError, build_multilabel_dataset, require_dir, require_file, select_splits

__all__ = ["VOC_CLASSES", "VOC_DIFFICULT_MODES", "VOC_SPLITS", "load_voc"]

VOC_SPLITS = {2007: ("trainval", "test"), 2012: ("train", "val", "trainval")}
VOC_DIFFICULT_MODES = ("negative", "positive")


def _find_year_dir(root: str, year: int) -> str:
    """The `VOC{year}` folder (holding `Annotations/`, `ImageSets/`, `JPEGImages/`) under any accepted root."""
    name = f"VOC{year}"
    candidates = [
        root,
        os.path.join(root, "VOCdevkit", name),
        os.path.join(root, name),
        os.path.join(root, name, "VOCdevkit", name),
    ]
    for candidate in candidates:
        if os.path.isdir(os.path.join(candidate, "Annotations")) and os.path.isdir(
            os.path.join(candidate, "ImageSets", "Main")
        ):
            return candidate
    tried = ", ".join(os.path.join(candidate, "Annotations") for candidate in candidates)
    raise DatasetLayoutError(
        f"Could not find the PASCAL VOC {year} folder under {root}: expected `Annotations/`, `ImageSets/Main/` and "
        f"`JPEGImages/` in `VOCdevkit/{name}/` (tried {tried}). Pass the folder that holds `VOCdevkit` or the "
        f"`{name}` folder itself, as extracted from the official VOCtrainval tar (and VOCtest tar for 2007 test)."
    )


def _parse_annotation(path: str) -> tuple[set, set]:
    """(classes with at least one non-difficult object, classes with only difficult objects) of one XML file."""
    try:
        tree = ElementTree.parse(path)
    except ElementTree.ParseError as error:
        raise ValueError(f"{path} is not a valid PASCAL VOC annotation XML ({error}).") from error
    class_of_name = {name: index for index, name in enumerate(VOC_CLASSES)}
    clear, difficult = set(), set()
    for obj in tree.getroot().iter("object"):
        name_node = obj.find("name")
        if name_node is None or not (name_node.text or "").strip():
            raise ValueError(f"{path}: an <object> has no <name>.")
        name = name_node.text.strip().lower()
        if name not in class_of_name:
            raise ValueError(f"{path}: unknown object class {name!r}; expected one of the 20 VOC classes.")
        difficult_node = obj.find("difficult")
        is_difficult = difficult_node is not None and (difficult_node.text or "0").strip() == "1"
        (difficult if is_difficult else clear).add(class_of_name[name])
    return clear, difficult - clear


def _load_split(
    year_dir: str, year: int, split: str, difficult: str, skip_missing: bool, skip_unreadable: bool
) -> datasets.Dataset:
    list_path = require_file(
        os.path.join(year_dir, "ImageSets", "Main", f"{split}.txt"),
        f"PASCAL VOC {year} {split} image list",
        "For VOC2007 `test`, extract VOCtest_06-Nov-2007.tar into the same VOCdevkit.",
    )
    image_dir = require_dir(os.path.join(year_dir, "JPEGImages"), f"PASCAL VOC {year} image folder")
    with open(list_path, encoding="utf-8") as handle:
        image_ids = [line.split()[0] for line in handle if line.strip()]

    paths, labels, missing_annotations = [], [], []
    for image_id in image_ids:
        annotation_path = os.path.join(year_dir, "Annotations", f"{image_id}.xml")
        if not os.path.isfile(annotation_path):
            missing_annotations.append(annotation_path)
            continue
        clear, difficult_only = _parse_annotation(annotation_path)
        paths.append(os.path.join(image_dir, f"{image_id}.jpg"))
        labels.append(clear | difficult_only if difficult == "positive" else clear)
    if missing_annotations:
        raise FileNotFoundError(
            f"PASCAL VOC {year} {split}: {len(missing_annotations)} image(s) listed in {list_path} have no "
            f"annotation file, e.g. {missing_annotations[0]}."
        )
    return build_multilabel_dataset(
        paths,
        labels,
        VOC_CLASSES,
        description=f"PASCAL VOC {year} {split}",
        skip_missing=skip_missing,
        skip_unreadable=skip_unreadable,
    )


def load_voc(
    root: str | os.PathLike,
    split: str | None = None,
    *,
    year: int = 2007,
    difficult: str = "negative",
    skip_missing: bool = False,
    skip_unreadable: bool = False,
) -> datasets.Dataset | datasets.DatasetDict:
    """Load PASCAL VOC 2007 or 2012 object annotations as multi-label image classification.

    Download (http://host.robots.ox.ac.uk/pascal/VOC/): `VOCtrainval_06-Nov-2007.tar` and
    `VOCtest_06-Nov-2007.tar` (2007), or `VOCtrainval_11-May-2012.tar` (2012; its test labels are not
    public), extracted into the same folder::

        root/VOCdevkit/VOC2007/
            Annotations/000005.xml ...
            ImageSets/Main/trainval.txt, test.txt (2007) / train.txt, val.txt, trainval.txt (2012)
            JPEGImages/000005.jpg ...

    `root` may be the folder holding `VOCdevkit`, `VOCdevkit` itself or `VOC2007` / `VOC2012` itself.
    The 20 classes are in the standard VOC order ([`VOC_CLASSES`]).

    Objects marked `<difficult>1</difficult>` are handled by `difficult`, for classes whose only objects in an
    image are difficult (a class with any non-difficult object is always positive):

    * `"negative"` (default): such classes are not labels. This is what the official SADCL code and
      Query2Label do (they skip difficult objects when reading the XML files).
    * `"positive"`: such classes are labels, as in ML-GCN's training targets (difficult = 0 in the
      `{class}_{split}.txt` files, mapped to 1 for training).

    The VOC evaluation protocol, which leaves such (image, class) pairs out of the AP, is not implemented: the
    metrics score every pair, so a test split loaded with `"negative"` counts them as negatives (what the official
    SADCL and Query2Label evaluations do).

    Args:
        root: see above.
        split: 2007: `"trainval"`, `"test"`; 2012: `"train"`, `"val"`, `"trainval"`. `None`: all of them.
        year: 2007 or 2012.
        difficult: `"negative"` or `"positive"`.
        skip_missing: drop images whose JPEG is missing (warning) instead of raising `FileNotFoundError`.
        skip_unreadable: decode every image first and drop the unreadable ones (warning).
    """
    if year not in VOC_SPLITS:
        raise ValueError(f"PASCAL VOC year must be 2007 or 2012, got {year!r}.")
    if difficult not in VOC_DIFFICULT_MODES:
        raise ValueError(f"difficult must be one of {list(VOC_DIFFICULT_MODES)}, got {difficult!r}.")
    splits = select_splits(split, VOC_SPLITS[year], f"PASCAL VOC {year}")
    year_dir = _find_year_dir(os.fspath(root), year)
    loaded = {name: _load_split(year_dir, year, name, difficult, skip_missing, skip_unreadable) for name in splits}
    return loaded[split] if split is not None else datasets.DatasetDict(loaded)
