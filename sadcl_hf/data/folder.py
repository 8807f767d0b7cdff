"""Custom data: an image folder with a metadata file, or any `datasets.Dataset` with an image and a label column."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import datasets

from .common import DatasetLayoutError, build_multilabel_dataset, multilabel_features

__all__ = ["from_hub_dataset", "load_folder"]

_METADATA_FILES = ("metadata.jsonl", "metadata.csv")
_LABEL_FORMATS = ("auto", "ids", "names", "multi_hot")
_INTEGER_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
_FLOAT_DTYPES = {"float16", "float32", "float64", "bfloat16"}
# separators people put between label names, tried when the configured one leaves the label strings whole
DEFAULT_LABEL_SEPARATOR = "|"
_LIKELY_SEPARATORS = ("|", ",", ";", " ", "\t")
# with inferred class names, this many rows or more, nearly all with a class of their own, is not a label column
_OWN_CLASS_MIN_ROWS = 20
_OWN_CLASS_FRACTION = 0.9


# --------------------------------------------------------------------------------------------------------------------
# Image folder with metadata.jsonl / metadata.csv
# --------------------------------------------------------------------------------------------------------------------


def _split_names(value: Any, separator: str, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: labels {text!r} look like a list but are not valid JSON.") from error
            return _split_names(parsed, separator, where)
        return [name.strip() for name in text.split(separator) if name.strip()]
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return [name.strip() for name in value if name.strip()]
    raise ValueError(f"{where}: expected 'labels' to be a list of class names (strings), got {value!r}.")


def _check_label_strings(cells: list[tuple[str, str]], separator: str, metadata_path: str) -> None:
    """Stop when label strings `(text, 'file:line')` look split by another separator than `separator`: no string
    holds `separator`, most hold another likely one, and splitting by it explains the strings as combinations of
    fewer classes."""
    texts = [text.strip() for text, _ in cells if text.strip()]
    if not texts or any(separator in text for text in texts):
        return
    for candidate in _LIKELY_SEPARATORS:
        if candidate == separator:
            continue
        holding = [(text, where) for text, where in cells if candidate in text.strip()]
        if len(holding) * 2 <= len(texts):
            continue
        tokens = {name.strip() for text in texts for name in text.split(candidate) if name.strip()}
        if len(tokens) < len(set(texts)):
            text, where = holding[0]
            raise ValueError(
                f"{metadata_path}: the 'labels' strings look separated by {candidate!r}, not by the label separator "
                f"{separator!r}: e.g. {where}: {text!r} would be one class ({len(set(texts))} classes, one per "
                f"combination, instead of {len(tokens)}); set label_separator={candidate!r} (training: "
                f"--dataset_options '{json.dumps({'label_separator': candidate})}')."
            )


def _check_own_classes(rows: list[tuple[str, list[str], str]], separator: str) -> None:
    """Stop when nearly every row has a class name no other row has (the labels were not split into names)."""
    if len(rows) < _OWN_CLASS_MIN_ROWS:
        return
    counts = Counter(name for _, names, _ in rows for name in names)
    singletons = [(names, where) for _, names, where in rows if any(counts[name] == 1 for name in names)]
    if len(singletons) >= _OWN_CLASS_FRACTION * len(rows):
        names, where = singletons[0]
        raise ValueError(
            f"{where}: {len(singletons)} of {len(rows)} metadata rows have a 'labels' class no other row has (e.g. "
            f"this row: {names}), so the labels are probably not split into class names; set the separator the "
            f"file uses instead of {separator!r} with label_separator (training: --dataset_options "
            '\'{"label_separator": "<separator>"}\'), or give the class names in classes.txt.'
        )


def _read_metadata(folder: str, separator: str, check_separator: bool) -> list[tuple[str, list[str], str]]:
    """Rows `(image path, label names, 'file:line')` of the metadata file in `folder`; with `check_separator`, label
    strings that look split by another separator stop with an error naming the file, an example row and the option
    to set."""
    jsonl_path, csv_path = (os.path.join(folder, name) for name in _METADATA_FILES)
    if os.path.isfile(jsonl_path) and os.path.isfile(csv_path):
        raise DatasetLayoutError(f"{folder} has both metadata.jsonl and metadata.csv; keep only one.")
    rows, label_strings = [], []
    if os.path.isfile(jsonl_path):
        metadata_path = jsonl_path
        with open(jsonl_path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{jsonl_path}:{line_number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{where}: not a valid JSON object ({error}).") from error
                if not isinstance(record, dict) or "file_name" not in record or "labels" not in record:
                    raise ValueError(f"{where}: expected an object with 'file_name' and 'labels' keys.")
                if isinstance(record["labels"], str) and not record["labels"].strip().startswith("["):
                    label_strings.append((record["labels"], where))
                rows.append((record["file_name"], _split_names(record["labels"], separator, where), where))
    elif os.path.isfile(csv_path):
        metadata_path = csv_path
        with open(csv_path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in ("file_name", "labels") if column not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{csv_path}: missing column(s) {missing}; found {reader.fieldnames}.")
            for line_number, record in enumerate(reader, start=2):
                where = f"{csv_path}:{line_number}"
                if record["labels"] is not None and not record["labels"].strip().startswith("["):
                    label_strings.append((record["labels"], where))
                rows.append((record["file_name"], _split_names(record["labels"], separator, where), where))
    else:
        raise DatasetLayoutError(f"Expected {jsonl_path} or {csv_path}, but neither exists.")
    if check_separator:
        _check_label_strings(label_strings, separator, metadata_path)
    for file_name, _, where in rows:
        if not isinstance(file_name, str) or not file_name.strip():
            raise ValueError(f"{where}: 'file_name' must be a non-empty relative path, got {file_name!r}.")
    return [(os.path.join(folder, file_name.strip()), names, where) for file_name, names, where in rows]


def load_folder(
    root: str | os.PathLike,
    split: str | None = None,
    *,
    label_names: Sequence[str] | None = None,
    label_separator: str | None = None,
    drop_unlabeled: bool = False,
    skip_missing: bool = False,
    skip_unreadable: bool = False,
) -> datasets.Dataset | datasets.DatasetDict:
    """Load a folder of images described by a metadata file.

    Layout, either one split (named `"train"`)::

        root/
            metadata.jsonl  (or metadata.csv)
            classes.txt     (optional: the class names, one per line, in class-id order)
            img_001.jpg ...

    or one sub-folder per split, each with its own metadata file (`root/train/metadata.jsonl`,
    `root/validation/metadata.jsonl`, ...) and an optional shared `root/classes.txt`.

    Metadata columns (the `file_name` convention of the Hugging Face ImageFolder):

    * `metadata.jsonl`: one JSON object per line, `{"file_name": "img_001.jpg", "labels": ["cat", "dog"]}`;
    * `metadata.csv`: header `file_name,labels`; `labels` holds names separated by `label_separator` (`"cat|dog"`)
      or a JSON list (`"[""cat"", ""dog""]"`); an empty cell means no label. A `labels` string in
      `metadata.jsonl` is split the same way.

    A misread separator stops with an error naming the file, an example row and the option to set: when no label
    string holds the default `|` while most hold another usual one (`,`, `;`, space, tab) that splits them into
    fewer classes (`"blue green square"`; an explicit `label_separator`, even `"|"`, turns this check off), or,
    with inferred class names, when 90% of 20 or more rows have a class no other row has.

    `file_name` is relative to the metadata file's folder. Class names come from `label_names`, else from
    `classes.txt`, else they are all the names found in the metadata, sorted alphabetically. With explicit
    names (argument or `classes.txt`) a label outside them raises an error naming the file and line.

    Args:
        root: the folder described above.
        split: return only this split (`"train"` for a single-split folder); `None` returns a `DatasetDict`.
        label_names: the class names in class-id order.
        label_separator: separator of the label names in a `labels` string; default `"|"`, with the check above
            (training: `--dataset_options '{"label_separator": " "}'`).
        drop_unlabeled: drop images without any label.
        skip_missing: drop rows whose image file is missing (warning) instead of raising `FileNotFoundError`.
        skip_unreadable: decode every image first and drop the unreadable ones (corrupt, truncated, not an
            image), logging how many were skipped.
    """
    root = os.fspath(root)
    check_separator = label_separator is None
    label_separator = DEFAULT_LABEL_SEPARATOR if label_separator is None else label_separator
    if not isinstance(label_separator, str) or not label_separator:
        raise ValueError(f"label_separator must be a non-empty string, got {label_separator!r}.")
    if not os.path.isdir(root):
        raise DatasetLayoutError(f"Image folder {root} does not exist or is not a directory.")
    if any(os.path.isfile(os.path.join(root, name)) for name in _METADATA_FILES):
        split_dirs = {"train": root}
    else:
        split_dirs = {
            entry: os.path.join(root, entry)
            for entry in sorted(os.listdir(root))
            if any(os.path.isfile(os.path.join(root, entry, name)) for name in _METADATA_FILES)
        }
        if not split_dirs:
            raise DatasetLayoutError(
                f"Expected {os.path.join(root, 'metadata.jsonl')} (or metadata.csv), or split sub-folders "
                f"such as {os.path.join(root, 'train', 'metadata.jsonl')}; found neither."
            )
    if split is not None and split not in split_dirs:
        raise ValueError(f"Unknown split {split!r} in {root}; available: {list(split_dirs)}.")
    selected = {split: split_dirs[split]} if split is not None else split_dirs
    rows_per_split = {
        name: _read_metadata(folder, label_separator, check_separator) for name, folder in selected.items()
    }

    classes_path = os.path.join(root, "classes.txt")
    if label_names is not None:
        class_names = [str(name) for name in label_names]
    elif os.path.isfile(classes_path):
        with open(classes_path, encoding="utf-8") as handle:
            class_names = [line.strip() for line in handle if line.strip()]
    else:
        all_rows = [
            row for folder in split_dirs.values() for row in _read_metadata(folder, label_separator, check_separator)
        ]
        _check_own_classes(all_rows, label_separator)
        class_names = sorted({label for _, names, _ in all_rows for label in names})
    if not class_names:
        raise ValueError(f"No class names for {root}: the metadata has no labels and no classes.txt / label_names.")
    class_of_name = {name: index for index, name in enumerate(class_names)}

    loaded = {}
    for name, rows in rows_per_split.items():
        labels = []
        for _, names, where in rows:
            unknown = [label for label in names if label not in class_of_name]
            if unknown:
                source = "label_names" if label_names is not None else classes_path
                raise ValueError(f"{where}: unknown label(s) {unknown}; the classes are those in {source}.")
            labels.append([class_of_name[label] for label in names])
        loaded[name] = build_multilabel_dataset(
            [path for path, _, _ in rows],
            labels,
            class_names,
            description=f"image folder {root} ({name})",
            drop_unlabeled=drop_unlabeled,
            skip_missing=skip_missing,
            skip_unreadable=skip_unreadable,
        )
    return loaded[split] if split is not None else datasets.DatasetDict(loaded)


# --------------------------------------------------------------------------------------------------------------------
# Any datasets.Dataset
# --------------------------------------------------------------------------------------------------------------------


def _label_kind(feature: Any, label_column: str) -> tuple[str, bool, list[str] | None, int]:
    """(kind, is_list, class names from the feature, fixed list length or -1) of a label column's feature."""
    if isinstance(feature, datasets.ClassLabel):
        return "ids", False, list(feature.names), -1
    if isinstance(feature, datasets.Value):
        if feature.dtype in ("string", "large_string"):
            return "names", False, None, -1
        if feature.dtype in _INTEGER_DTYPES:
            return "ids", False, None, -1
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        inner = feature.feature
        length = getattr(feature, "length", -1)
        if isinstance(inner, datasets.ClassLabel):
            return "ids", True, list(inner.names), length
        if isinstance(inner, datasets.Value):
            if inner.dtype in ("string", "large_string"):
                return "names", True, None, length
            if inner.dtype == "bool" or inner.dtype in _FLOAT_DTYPES:
                return "multi_hot", True, None, length
            if inner.dtype in _INTEGER_DTYPES:
                return "integers", True, None, length
    raise ValueError(
        f"Unsupported label column {label_column!r} of type {feature}; expected a list of class names, a list of "
        "class ids, a multi-hot list, or a single ClassLabel / name / id per row."
    )


def _resolve_integer_lists(values: list[list[int]], num_names: int | None, label_column: str) -> str:
    """Decide whether integer lists are class ids or multi-hot vectors (`label_format="auto"`)."""
    lengths = {len(row) for row in values}
    binary = all(value in (0, 1) for row in values for value in row)
    has_duplicates = any(len(set(row)) != len(row) for row in values)
    if binary and len(lengths) == 1 and has_duplicates and (num_names is None or lengths == {num_names}):
        return "multi_hot"
    if not has_duplicates:
        return "ids"
    raise ValueError(
        f"Cannot tell whether the integer lists in {label_column!r} are class ids or multi-hot vectors; "
        "pass label_format='ids' or label_format='multi_hot'."
    )


def _column_values(dataset: datasets.Dataset, column: str) -> list:
    return dataset.select_columns([column]).with_format(None)[column]


def from_hub_dataset(
    dataset: datasets.Dataset | datasets.DatasetDict,
    image_column: str = "image",
    label_column: str = "labels",
    label_names: Sequence[str] | None = None,
    label_format: str = "auto",
) -> datasets.Dataset | datasets.DatasetDict:
    """Convert any image dataset (from the Hub or in memory) to the sadcl-hf multi-label schema.

    The result has exactly two columns: `image` (`datasets.Image`) and `labels` (`List(ClassLabel(names))`).

    Args:
        dataset: a `Dataset` or `DatasetDict`. The image column may be a `datasets.Image` feature or image file paths.
        image_column: name of the image column.
        label_column: name of the label column, holding per row one of:
            a list of class ids (`List(ClassLabel)` or integers), a list of class names (strings), a multi-hot
            vector (bools, floats or 0/1 integers of length K), or a single `ClassLabel` / name / id
            (single-label data).
        label_names: class names in class-id order. Required for integer ids and multi-hot vectors without
            `ClassLabel` names, where it fixes K; for names, the default is all names found, sorted; for a
            `ClassLabel` column it renames the classes (same count).
        label_format: `"auto"` (infer from the feature type; integer lists are multi-hot only if all rows have the
            same length, only 0/1 values, and repeated values), `"ids"`, `"names"` or `"multi_hot"`.
    """
    if label_format not in _LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {list(_LABEL_FORMATS)}, got {label_format!r}.")
    if isinstance(dataset, datasets.DatasetDict):
        parts = dict(dataset)
    elif isinstance(dataset, datasets.Dataset):
        parts = {None: dataset}
    else:
        raise TypeError(f"Expected a datasets.Dataset or DatasetDict, got {type(dataset).__name__}.")

    first = next(iter(parts.values()))
    for part_name, part in parts.items():
        for column in (image_column, label_column):
            if column not in part.column_names:
                where = f" (split {part_name!r})" if part_name is not None else ""
                raise ValueError(f"Column {column!r} not found{where}; columns are {part.column_names}.")
        if part.features[label_column] != first.features[label_column]:
            raise ValueError(f"The label column {label_column!r} has different types across splits.")

    kind, is_list, feature_names, fixed_length = _label_kind(first.features[label_column], label_column)
    if label_format != "auto":
        kind = label_format
    values_per_part = {name: _column_values(part, label_column) for name, part in parts.items()}
    if not is_list:
        values_per_part = {name: [[value] for value in values] for name, values in values_per_part.items()}
        if kind == "multi_hot":
            raise ValueError(f"label_format='multi_hot' needs a list column, but {label_column!r} holds single values.")

    if kind == "integers":
        all_rows = [row for values in values_per_part.values() for row in values]
        num_names = len(label_names) if label_names is not None else (fixed_length if fixed_length > 0 else None)
        kind = _resolve_integer_lists(all_rows, num_names, label_column)

    if kind == "names":
        if label_names is None:
            class_names = sorted({name for values in values_per_part.values() for row in values for name in row})
        else:
            class_names = [str(name) for name in label_names]
    elif kind == "ids":
        if feature_names is not None:
            if label_names is not None and len(label_names) != len(feature_names):
                raise ValueError(
                    f"label_names has {len(label_names)} entries but the ClassLabel feature has {len(feature_names)}."
                )
            class_names = [str(name) for name in label_names] if label_names is not None else feature_names
        elif label_names is not None:
            class_names = [str(name) for name in label_names]
        else:
            raise ValueError(f"{label_column!r} holds integer class ids without names; pass label_names=[...].")
    else:
        if label_names is not None:
            class_names = [str(name) for name in label_names]
        elif fixed_length > 0:
            class_names = [str(index) for index in range(fixed_length)]
        else:
            raise ValueError(f"{label_column!r} holds multi-hot vectors; pass label_names=[...] (one per position).")

    num_classes = len(class_names)
    class_of_name = {name: index for index, name in enumerate(class_names)}

    def to_ids(row: list, row_index: int, part_name: str | None) -> list[int]:
        where = f"row {row_index}" + (f" of split {part_name!r}" if part_name is not None else "")
        if row is None:
            return []
        if kind == "names":
            unknown = [name for name in row if name not in class_of_name]
            if unknown:
                raise ValueError(f"{where}: unknown label name(s) {unknown}; expected names in label_names.")
            return sorted({class_of_name[name] for name in row})
        if kind == "ids":
            if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_classes for i in row):
                raise ValueError(f"{where}: class ids {row} are not integers in [0, {num_classes}).")
            return sorted(set(row))
        if len(row) != num_classes:
            raise ValueError(f"{where}: multi-hot vector of length {len(row)}, expected {num_classes}.")
        if any(value not in (0, 1) for value in row):
            raise ValueError(f"{where}: multi-hot values must be 0/1 (or booleans), got {row}.")
        return [index for index, value in enumerate(row) if value]

    features = multilabel_features(class_names)
    converted = {}
    for part_name, part in parts.items():
        ids = [to_ids(row, index, part_name) for index, row in enumerate(values_per_part[part_name])]
        images = part.select_columns([image_column])
        image_feature = images.features[image_column]
        if isinstance(image_feature, datasets.Value) and image_feature.dtype in ("string", "large_string"):
            images = images.cast_column(image_column, datasets.Image())
        elif not isinstance(image_feature, datasets.Image):
            raise ValueError(
                f"Column {image_column!r} has type {image_feature}; expected datasets.Image or image file paths."
            )
        if image_column != "image":
            images = images.rename_column(image_column, "image")
        converted[part_name] = images.add_column("labels", ids, feature=features["labels"]).cast(features)
    return converted[None] if None in converted else datasets.DatasetDict(converted)
