"""digits-mosaic: the embedded real dataset (sklearn handwritten digits) — format, determinism, splits, cache."""

import os
import time

import datasets
import numpy as np
import pytest

from sadcl_hf.data import (
    dataset_label_names,
    digits_mosaic_cache_path,
    digits_mosaic_scan_pools,
    load_digits_mosaic,
    load_multilabel_dataset,
)

SMALL = {"num_train": 50, "num_validation": 10, "num_test": 20}


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    cache = tmp_path_factory.mktemp("mosaic_cache")
    return load_digits_mosaic(cache_dir=cache, **SMALL), cache


def test_format_and_sizes(mosaic):
    dataset, _ = mosaic
    assert {name: len(part) for name, part in dataset.items()} == {"train": 50, "validation": 10, "test": 20}
    assert dataset_label_names(dataset) == [str(digit) for digit in range(10)]
    train = dataset["train"]
    assert isinstance(train.features["image"], datasets.Image)
    assert isinstance(train.features["labels"].feature, datasets.ClassLabel)
    image = train[0]["image"]
    assert image.mode == "RGB" and image.size == (64, 64) and image.format == "PNG"
    for labels, scans in zip(train["labels"], train["source_scans"]):
        assert 1 <= len(scans) <= 4 and labels == sorted(set(labels)) and 1 <= len(labels) <= len(scans)


def test_labels_match_the_digits_drawn(mosaic):
    from sklearn.datasets import load_digits

    targets = load_digits().target
    dataset, _ = mosaic
    for part in dataset.values():
        for labels, scans in zip(part["labels"], part["source_scans"]):
            assert labels == sorted({int(targets[scan]) for scan in scans})


def test_no_scan_in_two_splits(mosaic):
    dataset, _ = mosaic
    used = {name: {scan for scans in part["source_scans"] for scan in scans} for name, part in dataset.items()}
    assert not used["train"] & used["validation"]
    assert not used["train"] & used["test"]
    assert not used["validation"] & used["test"]
    pools = digits_mosaic_scan_pools(seed=0)
    for name in used:
        assert used[name] <= set(pools[name].tolist())
    assert sum(len(pool) for pool in pools.values()) == 1797


def test_images_show_the_digits(mosaic):
    """Pixels differ from the plain background where digits are drawn: the canvas is not blank noise."""
    dataset, _ = mosaic
    pixels = np.stack([np.asarray(example["image"], dtype=np.float32) for example in dataset["test"]])
    brightness = pixels.mean(axis=3).reshape(len(pixels), -1)
    contrast = np.percentile(brightness, 99, axis=1) - np.median(brightness, axis=1)
    assert (contrast > 40).all()


def test_deterministic_and_cached(mosaic, tmp_path):
    dataset, cache = mosaic
    path = digits_mosaic_cache_path(cache, **SMALL)
    assert os.path.isfile(os.path.join(path, "dataset_dict.json"))
    start = time.perf_counter()
    again = load_digits_mosaic(cache_dir=cache, **SMALL)
    assert time.perf_counter() - start < 2.0
    assert again["train"].cache_files[0]["filename"].startswith(path)

    fresh = load_digits_mosaic(cache_dir=tmp_path, **SMALL)
    assert fresh["test"]["labels"] == dataset["test"]["labels"]
    assert fresh["test"].with_format("arrow")["image"] == dataset["test"].with_format("arrow")["image"]

    other_seed = load_digits_mosaic("test", cache_dir=tmp_path, seed=1, **SMALL)
    assert digits_mosaic_cache_path(tmp_path, seed=1, **SMALL) != path.replace(str(cache), str(tmp_path))
    assert other_seed["source_scans"] != dataset["test"]["source_scans"]


def test_env_cache_split_and_options(tmp_path, monkeypatch):
    monkeypatch.setenv("SADCL_HF_CACHE", str(tmp_path / "env_cache"))
    options = {"num_train": 5, "num_validation": 3, "num_test": 4, "image_size": 32, "min_digits": 2, "max_digits": 2}
    test = load_multilabel_dataset("digits-mosaic", split="test", **options)
    assert len(test) == 4 and test[0]["image"].size == (32, 32)
    assert all(len(scans) == 2 for scans in test["source_scans"])
    assert digits_mosaic_cache_path(**options).startswith(str(tmp_path / "env_cache" / "digits-mosaic"))
    assert os.path.isdir(digits_mosaic_cache_path(**options))


def test_invalid_parameters(tmp_path):
    with pytest.raises(ValueError, match="Unknown digits-mosaic split"):
        load_digits_mosaic("val", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="digit_size"):
        load_digits_mosaic(cache_dir=tmp_path, digit_size=(16, 40), **SMALL)
    with pytest.raises(ValueError, match="min_digits"):
        load_digits_mosaic(cache_dir=tmp_path, min_digits=3, max_digits=2, **SMALL)
    with pytest.raises(ValueError, match=">= 1"):
        load_digits_mosaic(cache_dir=tmp_path, num_train=0)
