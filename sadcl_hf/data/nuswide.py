"""NUS-WIDE (81 concepts) as a multi-label classification dataset, from the official files or the ASL CSV."""

from __future__ import annotations

import ast
import csv
import os
from collections.abc import Sequence

import datasets
import numpy as np

from ..configuration_sadcl import NUS_WIDE_CONCEPTS
from .common import DatasetLayoutError, build_multilabel_dataset, require_file, select_splits

__all__ = ["NUS_WIDE_CONCEPTS", "NUS_WIDE_SPLITS", "load_nuswide"]

NUS_WIDE_SPLITS = ("train", "test")

_CONCEPT_FILE_LOCATIONS = ("Concepts81.txt", "ConceptsList/Concepts81.txt", "NUS_WID_Tags/Concepts81.txt")
_CSV_NAMES = ("nus_wid_data.csv", "nus_wide_data.csv")
_PATH_COLUMNS = ("filepath", "file_name", "filename", "image", "path", "name")
_LABEL_COLUMNS = ("label", "labels", "tags")
_SPLIT_COLUMNS = ("split_name", "split")
_SPLIT_ALIASES = {"train": "train", "training": "train", "test": "test", "val": "test", "validation": "test"}


def _concepts(root: str) -> list[str]:
    for location in _CONCEPT_FILE_LOCATIONS:
        path = os.path.join(root, location)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                names = [line.strip() for line in handle if line.strip()]
            if len(names) != 81 or len(set(names)) != 81:
                raise ValueError(f"{path} should list the 81 NUS-WIDE concepts, one per line; found {len(names)}.")
            return names
    return list(NUS_WIDE_CONCEPTS)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def _load_official_split(
    root: str, split: str, image_dir: str, drop_unlabeled: bool, skip_missing: bool, skip_unreadable: bool
) -> datasets.Dataset:
    subset = split.capitalize()
    list_path = require_file(
        os.path.join(root, "ImageList", f"{subset}Imagelist.txt"),
        f"NUS-WIDE {split} image list",
        "It comes in ImageList.zip from the NUS-WIDE site.",
    )
    names = [line.replace("\\", "/") for line in _read_lines(list_path)]
    class_names = _concepts(root)
    positives = np.zeros((len(names), len(class_names)), dtype=bool)  # [N, 81]
    for class_id, concept in enumerate(class_names):
        label_path = require_file(
            os.path.join(root, "Groundtruth", "TrainTestLabels", f"Labels_{concept}_{subset}.txt"),
            f"NUS-WIDE {split} ground truth of concept {concept!r}",
            "It comes in Groundtruth.zip (folder TrainTestLabels) from the NUS-WIDE site.",
        )
        values = _read_lines(label_path)
        if len(values) != len(names):
            raise ValueError(
                f"{label_path} has {len(values)} lines but {list_path} lists {len(names)} images; "
                "expected one 0/1 value per listed image."
            )
        try:
            positives[:, class_id] = np.array(values).astype(np.float64) > 0
        except ValueError as error:
            row = next(row for row, value in enumerate(values) if not _is_number(value))
            raise ValueError(f"{label_path} line {row + 1}: expected 0 or 1, got {values[row]!r}.") from error
    return build_multilabel_dataset(
        [os.path.join(image_dir, name) for name in names],
        [np.flatnonzero(row).tolist() for row in positives],
        class_names,
        description=f"NUS-WIDE {split}",
        drop_unlabeled=drop_unlabeled,
        skip_missing=skip_missing,
        skip_unreadable=skip_unreadable,
    )


def _parse_label_cell(cell: str) -> list[str]:
    cell = (cell or "").strip()
    if not cell:
        return []
    if cell.startswith("["):
        try:
            parsed = ast.literal_eval(cell)
        except (ValueError, SyntaxError):
            parsed = [part.strip(" '\"") for part in cell.strip("[]").split(",")]
        return [str(name).strip() for name in parsed if str(name).strip()]
    return [name.strip() for name in cell.split("|") if name.strip()]


def _pick_column(header: Sequence[str], choices: Sequence[str], path: str, what: str, required: bool = True):
    lowered = {column.strip().lower(): column for column in header}
    for choice in choices:
        if choice in lowered:
            return lowered[choice]
    if required:
        raise ValueError(f"{path}: no {what} column; expected one of {list(choices)}, found {list(header)}.")
    return None


def _read_csv_rows(csv_path: str) -> tuple[list[dict], str, str, str | None]:
    with open(csv_path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        rows = list(reader)
    path_column = _pick_column(header, _PATH_COLUMNS, csv_path, "image path")
    label_column = _pick_column(header, _LABEL_COLUMNS, csv_path, "label")
    split_column = _pick_column(header, _SPLIT_COLUMNS, csv_path, "split", required=False)
    return rows, path_column, label_column, split_column


def _load_csv(
    root: str,
    splits: Sequence[str],
    csv_file: str | None,
    image_dir: str,
    drop_unlabeled: bool,
    skip_missing: bool,
    skip_unreadable: bool,
) -> dict[str, datasets.Dataset]:
    per_split_rows: dict[str, list[tuple[str, list[str], int, str]]] = {name: [] for name in splits}
    sources = []
    if csv_file is not None:
        sources.append((require_file(os.path.join(root, csv_file), "NUS-WIDE CSV file"), None))
    else:
        combined = [os.path.join(root, name) for name in _CSV_NAMES if os.path.isfile(os.path.join(root, name))]
        if combined:
            sources.append((combined[0], None))
        else:
            for name in splits:
                path = require_file(
                    os.path.join(root, f"nus_wide_{name}.csv"),
                    f"NUS-WIDE {name} CSV",
                    f"Expected {' or '.join(_CSV_NAMES)} (ASL format) or nus_wide_train.csv / nus_wide_test.csv "
                    f"in {root}.",
                )
                sources.append((path, name))
    for csv_path, fixed_split in sources:
        rows, path_column, label_column, split_column = _read_csv_rows(csv_path)
        if fixed_split is None and split_column is None:
            raise ValueError(
                f"{csv_path} has no split column ({list(_SPLIT_COLUMNS)}); use per-split files "
                "nus_wide_train.csv / nus_wide_test.csv instead."
            )
        for line, row in enumerate(rows, start=2):
            if fixed_split is None:
                raw_split = (row[split_column] or "").strip().lower()
                if raw_split not in _SPLIT_ALIASES:
                    raise ValueError(
                        f"{csv_path} line {line}: unknown split {raw_split!r}; expected train, or val / test."
                    )
                row_split = _SPLIT_ALIASES[raw_split]
            else:
                row_split = fixed_split
            if row_split in per_split_rows:
                labels = _parse_label_cell(row[label_column])
                per_split_rows[row_split].append((row[path_column], labels, line, csv_path))

    concepts = _concepts(root)
    class_of_name = {name: index for index, name in enumerate(concepts)}
    loaded = {}
    for name, rows in per_split_rows.items():
        paths, labels = [], []
        for image_path, names, line, csv_path in rows:
            unknown = [label for label in names if label not in class_of_name]
            if unknown:
                raise ValueError(f"{csv_path} line {line}: unknown NUS-WIDE concept(s) {unknown}.")
            paths.append(os.path.join(image_dir, image_path.replace("\\", "/")))
            labels.append([class_of_name[label] for label in names])
        loaded[name] = build_multilabel_dataset(
            paths,
            labels,
            concepts,
            description=f"NUS-WIDE {name} (CSV)",
            drop_unlabeled=drop_unlabeled,
            skip_missing=skip_missing,
            skip_unreadable=skip_unreadable,
        )
    return loaded


def load_nuswide(
    root: str | os.PathLike,
    split: str | None = None,
    *,
    format: str = "auto",
    image_dir: str | os.PathLike | None = None,
    csv_file: str | None = None,
    drop_unlabeled: bool = True,
    skip_missing: bool = False,
    skip_unreadable: bool = False,
) -> datasets.Dataset | datasets.DatasetDict:
    """Load the NUS-WIDE 81-concept benchmark.

    Two on-disk formats are accepted (`format="auto"` picks `"official"` when `root/ImageList/` exists, else
    `"csv"`):

    **official** — the files of the NUS-WIDE site
    (https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/NUS-WIDE.html)::

        root/
            Concepts81.txt                      (optional; also ConceptsList/ or NUS_WID_Tags/; else built in)
            ImageList/TrainImagelist.txt        one image per line, e.g. "actor\\0001_2124494179.jpg"
            ImageList/TestImagelist.txt
            Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt   one 0/1 per line of TrainImagelist.txt
            Groundtruth/TrainTestLabels/Labels_<concept>_Test.txt
            Flickr/actor/0001_2124494179.jpg    (the images; another folder via `image_dir`)

    **csv** — the widely used ASL / ML-Decoder release (`nus_wid_data.csv`, about 170k images that could still be
    downloaded), or per-split `nus_wide_train.csv` / `nus_wide_test.csv`, or any file given by `csv_file`.
    A header row is required, with columns (case-insensitive):

    * image path: `filepath` (ASL), `file_name`, `filename`, `image`, `path` or `name`; relative to `image_dir`
      (default `root`);
    * labels: `label` (ASL), `labels` or `tags`; either a list literal such as `"['clouds', 'sky']"` (ASL) or names
      separated by `|`; every name must be one of the 81 concepts;
    * split (combined files only): `split_name` (ASL) or `split`; `train`, and `val` or `test` (ASL's `val` is the
      NUS-WIDE test split and is returned as `"test"`).

    Classes: the 81 concepts in `Concepts81.txt` order (alphabetical; [`NUS_WIDE_CONCEPTS`]).

    Args:
        root: the dataset folder.
        split: `"train"` or `"test"`; `None` returns both.
        format: `"auto"`, `"official"` or `"csv"`.
        image_dir: folder the image paths are relative to (official default `root/Flickr`, csv default `root`).
        csv_file: CSV file name (relative to `root`) for `format="csv"`.
        drop_unlabeled: drop images with none of the 81 concepts (default, as in the SADCL / Query2Label code).
        skip_missing: drop images whose file is missing (warning); many NUS-WIDE images are no longer downloadable.
        skip_unreadable: decode every image first and drop the unreadable ones (warning); slow.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DatasetLayoutError(f"NUS-WIDE root {root} is not a directory.")
    splits = select_splits(split, NUS_WIDE_SPLITS, "NUS-WIDE")
    if format == "auto":
        format = "official" if os.path.isdir(os.path.join(root, "ImageList")) else "csv"
        if (
            format == "csv"
            and csv_file is None
            and not any(
                os.path.isfile(os.path.join(root, name))
                for name in (*_CSV_NAMES, *(f"nus_wide_{split_name}.csv" for split_name in splits))
            )
        ):
            raise DatasetLayoutError(
                f"Could not recognise a NUS-WIDE layout in {root}: expected either the official files "
                f"({os.path.join(root, 'ImageList', 'TrainImagelist.txt')} and Groundtruth/TrainTestLabels/) or a CSV "
                f"({os.path.join(root, _CSV_NAMES[0])}, or nus_wide_train.csv / nus_wide_test.csv)."
            )
    if format == "official":
        folder = os.fspath(image_dir) if image_dir is not None else os.path.join(root, "Flickr")
        loaded = {
            name: _load_official_split(root, name, folder, drop_unlabeled, skip_missing, skip_unreadable)
            for name in splits
        }
    elif format == "csv":
        folder = os.fspath(image_dir) if image_dir is not None else root
        loaded = _load_csv(root, splits, csv_file, folder, drop_unlabeled, skip_missing, skip_unreadable)
    else:
        raise ValueError(f"format must be 'auto', 'official' or 'csv', got {format!r}.")
    return loaded[split] if split is not None else datasets.DatasetDict(loaded)
