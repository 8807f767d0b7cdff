"""Streaming multi-label data for sets beyond one disk: a `datasets.IterableDataset` read shard by shard.

    dataset = load_streaming_dataset("/data/coco-parquet", split="train")     # <root>/train/*.parquet
    dataset = load_streaming_dataset("/data/coco-wds", split="train")         # <root>/train/*.tar (WebDataset)
    dataset = load_streaming_dataset("user/coco-multilabel", split="train")   # a Hub dataset, the same code path

Training uses it with `scripts/train.py --streaming --dataset_root SOURCE --max_steps N`; each process of a
multi-process run reads its own shards (`datasets.distributed.split_dataset_by_node`, see `SADCLTrainer`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

from .common import DatasetLayoutError, dataset_label_names, multilabel_features

__all__ = ["load_streaming_dataset", "write_parquet_shards"]

_WEBDATASET_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def load_streaming_dataset(
    source: str | os.PathLike,
    split: str = "train",
    class_names: Sequence[str] | None = None,
    **options: Any,
) -> datasets.IterableDataset:
    """Streams one split of a multi-label dataset (`streaming=True`: nothing is downloaded or converted up front).

    Args:
        source: a local folder holding the split's shards, or a Hub dataset id. Parquet shards:
            `<source>/<split>/*.parquet` or `<source>/<split>-*.parquet` (written by [`write_parquet_shards`] or
            `Dataset.to_parquet`; the class names travel in the file metadata). WebDataset shards:
            `<source>/<split>/*.tar` or `<source>/<split>-*.tar`, each sample an image (`.jpg`, `.jpeg`, `.png` or
            `.webp`) and a `.json` `{"labels": [class names]}`; the class names come from `class_names` or
            `<source>/classes.txt` (one per line, in class-id order).
        split: the split to stream.
        class_names: WebDataset shards only: the class names in class-id order.
        **options: forwarded to `datasets.load_dataset` (e.g. `revision=`, `token=`).

    Returns:
        `datasets.IterableDataset` with the sadcl-hf schema (`image`, `labels`: `List(ClassLabel(names=...))`);
        its `n_shards` is the number of files.
    """
    folder = Path(source)
    if folder.is_dir():
        shards = {}
        for suffix in ("parquet", "tar"):
            shards[suffix] = sorted(folder.glob(f"{split}/*.{suffix}")) or sorted(folder.glob(f"{split}-*.{suffix}"))
        builder = "parquet" if shards["parquet"] else "webdataset"
        files = shards["parquet"] or shards["tar"]
        if not files:
            raise DatasetLayoutError(
                f"Expected parquet or WebDataset shards of the {split!r} split at {folder / split}/*.parquet (or "
                f"*.tar) or {folder}/{split}-*.parquet (or -*.tar), but there are none."
            )
        dataset = datasets.load_dataset(
            builder, data_files={split: [str(path) for path in files]}, split=split, streaming=True, **options
        )
        if builder == "webdataset":
            dataset = _from_webdataset(dataset, class_names or _read_class_names(folder), files[0])
    elif os.path.exists(folder):
        raise DatasetLayoutError(f"Expected a folder of parquet shards or a Hub dataset id, got the file {folder}.")
    else:
        dataset = datasets.load_dataset(str(source), split=split, streaming=True, **options)
    dataset_label_names(dataset)  # the class names must travel with the data (List(ClassLabel) features)
    return dataset


def _read_class_names(folder: Path) -> list[str]:
    path = folder / "classes.txt"
    if not path.is_file():
        raise DatasetLayoutError(
            f"WebDataset shards carry no class names: expected them at {path} (one per line) or class_names=[...]."
        )
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _from_webdataset(
    dataset: datasets.IterableDataset, names: Sequence[str], first_shard: Path
) -> datasets.IterableDataset:
    """WebDataset samples (`<key>.<image extension>`, `<key>.json` with `labels`) -> the sadcl-hf schema."""
    columns = list(dataset.features or {})
    image_keys = [key for key in _WEBDATASET_IMAGE_KEYS if key in columns]
    if not image_keys or "json" not in columns:
        raise DatasetLayoutError(
            f"{first_shard}: expected samples with an image ({', '.join(_WEBDATASET_IMAGE_KEYS)}) and a .json "
            f"{{'labels': [...]}}, found the extensions {columns}."
        )
    index = {name: position for position, name in enumerate(names)}

    def to_schema(sample: dict) -> dict:
        unknown = [name for name in sample["json"]["labels"] if name not in index]
        if unknown:
            raise ValueError(f"{sample['__url__']} sample {sample['__key__']}: labels {unknown} are not in the classes")
        return {"image": sample[image_keys[0]], "labels": sorted(index[name] for name in sample["json"]["labels"])}

    return dataset.map(to_schema, remove_columns=columns, features=multilabel_features(names))


def write_parquet_shards(dataset: datasets.Dataset, root: str | os.PathLike, split: str, num_shards: int) -> list[Path]:
    """Writes `dataset` as `num_shards` parquet files `<root>/<split>/<split>-0000i-of-0000n.parquet` (images
    embedded, features in the file metadata) for [`load_streaming_dataset`]."""
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(num_shards):
        path = folder / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
        dataset.shard(num_shards=num_shards, index=index, contiguous=True).to_parquet(str(path))
        paths.append(path)
    return paths
