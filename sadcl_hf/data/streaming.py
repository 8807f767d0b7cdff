"""Streaming multi-label data for sets beyond one disk: a `datasets.IterableDataset` read shard by shard.

    dataset = load_streaming_dataset("/data/coco-parquet", split="train")     # <root>/train/*.parquet
    dataset = load_streaming_dataset("user/coco-multilabel", split="train")   # a Hub dataset, the same code path

Training uses it with `scripts/train.py --streaming --dataset_root SOURCE --max_steps N`; each process of a
multi-process run reads its own shards (`datasets.distributed.split_dataset_by_node`, see `SADCLTrainer`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import datasets

from .common import DatasetLayoutError, label_names

__all__ = ["load_streaming_dataset", "write_parquet_shards"]


def load_streaming_dataset(source: Union[str, os.PathLike], split: str = "train", **options: Any) -> datasets.IterableDataset:
    """Streams one split of a multi-label dataset (`streaming=True`: nothing is downloaded or converted up front).

    Args:
        source: a local folder holding the split's parquet shards as `<source>/<split>/*.parquet` or
            `<source>/<split>-*.parquet` (written by [`write_parquet_shards`] or `Dataset.to_parquet`), or a Hub
            dataset id.
        split: the split to stream.
        **options: forwarded to `datasets.load_dataset` (e.g. `revision=`, `token=`).

    Returns:
        `datasets.IterableDataset` with the sadcl-hf schema (`image`, `labels`: `List(ClassLabel(names=...))`);
        its `n_shards` is the number of files.
    """
    folder = Path(source)
    if folder.is_dir():
        files = sorted(folder.glob(f"{split}/*.parquet")) or sorted(folder.glob(f"{split}-*.parquet"))
        if not files:
            raise DatasetLayoutError(
                f"Expected parquet shards of the {split!r} split at {folder / split}/*.parquet or "
                f"{folder}/{split}-*.parquet, but there are none."
            )
        dataset = datasets.load_dataset(
            "parquet", data_files={split: [str(path) for path in files]}, split=split, streaming=True, **options
        )
    elif os.path.exists(folder):
        raise DatasetLayoutError(f"Expected a folder of parquet shards or a Hub dataset id, got the file {folder}.")
    else:
        dataset = datasets.load_dataset(str(source), split=split, streaming=True, **options)
    label_names(dataset)  # the class names must travel with the data (List(ClassLabel) features)
    return dataset


def write_parquet_shards(dataset: datasets.Dataset, root: Union[str, os.PathLike], split: str, num_shards: int) -> list[Path]:
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
