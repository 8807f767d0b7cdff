"""`digits-mosaic`: a small real multi-label dataset that needs no download.

Each image is a noisy canvas holding 1 to 4 handwritten digits taken from the 1,797 real 8x8 scans that ship
inside scikit-learn (`sklearn.datasets.load_digits`, the UCI optical-recognition digits). Digits are upsampled
(bilinear) to a random size, tinted with a random colour and contrast, and placed at a random position inside
their own cell of a grid, so digits never overlap and every label is visible. The labels are the set of digits
shown (10 classes named `"0"` ... `"9"`).

The scans are split per digit class into train / validation / test pools before any image is drawn, so no scan
appears in two splits. Everything is deterministic given the parameters; the result is cached as Arrow
(`save_to_disk`) under `<cache>/digits-mosaic/<key>` where `<cache>` is `cache_dir`, else `$SADCL_HF_CACHE`, else
`~/.cache/sadcl_hf`, and `<key>` hashes the parameters.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
import uuid
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
from tqdm.auto import tqdm

from ..configuration_sadcl import DIGIT_CLASSES
from .common import multilabel_features

__all__ = [
    "DIGITS_MOSAIC_SPLITS",
    "DIGIT_CLASSES",
    "default_examples",
    "digits_mosaic_examples",
    "digits_mosaic_cache_path",
    "digits_mosaic_scan_pools",
    "load_digits_mosaic",
]

logger = logging.getLogger(__name__)

DIGITS_MOSAIC_SPLITS = ("train", "validation", "test")
_FORMAT_VERSION = 1
_DEFAULTS = {
    "num_train": 4000,
    "num_validation": 500,
    "num_test": 1000,
    "image_size": 64,
    "min_digits": 1,
    "max_digits": 4,
    "digit_size": None,
    "seed": 0,
    "scan_fractions": (0.7, 0.1, 0.2),
}
_CHUNK = 256


def _default_cache_root() -> str:
    return os.environ.get("SADCL_HF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sadcl_hf")


def _load_scans() -> tuple[np.ndarray, np.ndarray]:
    """The sklearn digit scans `[1797, 8, 8]` as float32 ink in [0, 1], and their classes `[1797]`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def digits_mosaic_scan_pools(
    seed: int = 0, scan_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
) -> dict[str, np.ndarray]:
    """The sklearn digit-scan indices reserved for each split (disjoint; every class in every split).

    Args:
        seed: the dataset seed.
        scan_fractions: fractions of each digit class's scans given to train, validation and test.

    Returns:
        `{"train": int64 [n_train], "validation": ..., "test": ...}` indices into `sklearn.datasets.load_digits()`.
    """
    if len(scan_fractions) != 3 or any(fraction <= 0 for fraction in scan_fractions):
        raise ValueError(f"scan_fractions must be three positive numbers, got {scan_fractions!r}.")
    total = float(sum(scan_fractions))
    _, targets = _load_scans()
    rng = np.random.default_rng([seed, 7919])
    pools = {name: [] for name in DIGITS_MOSAIC_SPLITS}
    for digit in range(10):
        scans = rng.permutation(np.flatnonzero(targets == digit))
        n_train = max(1, int(round(len(scans) * scan_fractions[0] / total)))
        n_validation = max(1, int(round(len(scans) * scan_fractions[1] / total)))
        n_train = min(n_train, len(scans) - n_validation - 1)
        pools["train"].append(scans[:n_train])
        pools["validation"].append(scans[n_train : n_train + n_validation])
        pools["test"].append(scans[n_train + n_validation :])
    return {name: np.sort(np.concatenate(parts)) for name, parts in pools.items()}


def _encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 `[H, W, 3]` array (Huffman-only deflate: noisy canvases gain nothing from
    LZ77 matching, and it is the fastest setting that still compresses)."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY)
    return buffer.getvalue()


def _bilinear_matrix(size: int, source: int = 8) -> np.ndarray:
    """`[size, source]` matrix `A` such that `A @ X @ A.T` resizes a `[source, source]` image bilinearly."""
    centres = (np.arange(size) + 0.5) * source / size - 0.5
    centres = np.clip(centres, 0, source - 1)
    low = np.floor(centres).astype(np.int64)
    high = np.minimum(low + 1, source - 1)
    weight_high = (centres - low).astype(np.float32)
    matrix = np.zeros((size, source), dtype=np.float32)
    matrix[np.arange(size), low] += 1.0 - weight_high
    matrix[np.arange(size), high] += weight_high
    return matrix


def _generate_split(
    num_images: int,
    pool: np.ndarray,
    scans: np.ndarray,
    targets: np.ndarray,
    *,
    image_size: int,
    min_digits: int,
    max_digits: int,
    digit_size: tuple[int, int],
    rng: np.random.Generator,
    description: str,
) -> dict[str, list]:
    """Draw `num_images` mosaics from the scans in `pool`; returns the columns `image`, `labels`, `source_scans`."""
    grid = math.ceil(math.sqrt(max_digits))
    cell = image_size // grid
    pool_of_class = [pool[targets[pool] == digit] for digit in range(10)]
    pool_sizes = np.array([len(scans_of_class) for scans_of_class in pool_of_class])
    padded_pools = np.zeros((10, pool_sizes.max()), dtype=np.int64)
    for digit, scans_of_class in enumerate(pool_of_class):
        padded_pools[digit, : len(scans_of_class)] = scans_of_class

    # Every random draw for the split, made at once: [N] or [N, max_digits(, 3)].
    counts = rng.integers(min_digits, max_digits + 1, size=num_images)
    classes = rng.integers(0, 10, size=(num_images, max_digits))
    choice = np.floor(rng.random((num_images, max_digits)) * pool_sizes[classes]).astype(np.int64)
    scan_ids = padded_pools[classes, choice]
    cells = np.argsort(rng.random((num_images, grid * grid)), axis=1)[:, :max_digits]
    sizes = rng.integers(digit_size[0], digit_size[1] + 1, size=(num_images, max_digits))
    offset_y = np.floor(rng.random((num_images, max_digits)) * (cell - sizes + 1)).astype(np.int64)
    offset_x = np.floor(rng.random((num_images, max_digits)) * (cell - sizes + 1)).astype(np.int64)
    top = (cells // grid) * cell + offset_y
    left = (cells % grid) * cell + offset_x
    contrast = rng.uniform(0.45, 1.0, size=(num_images, max_digits, 1))
    colours = (255.0 * rng.uniform(0.55, 1.0, size=(num_images, max_digits, 3)) * contrast).astype(np.float32)
    background = 255.0 * rng.uniform(0.0, 0.3, size=(num_images, 1, 1, 3))
    noise_level = 255.0 * rng.uniform(0.01, 0.08, size=(num_images, 1, 1, 1))
    noise_scale = (math.sqrt(12.0) * noise_level).astype(np.float32)  # uniform on [0, 1) -> std noise_level
    noise_offset = (background - noise_scale / 2 + 0.5).astype(np.float32)
    active = np.arange(max_digits)[None, :] < counts[:, None]

    matrices = {size: _bilinear_matrix(size) for size in range(digit_size[0], digit_size[1] + 1)}
    columns = {"image": [], "labels": [], "source_scans": []}
    encoder = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))  # PNG encoding releases the GIL
    progress = tqdm(total=num_images, desc=f"Generating digits-mosaic {description}", unit="img", leave=False)
    for start in range(0, num_images, _CHUNK):
        stop = min(start + _CHUNK, num_images)
        # Background colour plus uniform noise of standard deviation `noise_level`, in 0..255 units
        # (+0.5 so that truncating to uint8 rounds).
        canvases = rng.random((stop - start, image_size, image_size, 3), dtype=np.float32)
        np.multiply(canvases, noise_scale[start:stop], out=canvases)
        np.add(canvases, noise_offset[start:stop], out=canvases)
        # Upsample every active digit of the chunk, grouped by size, and alpha-blend it into its own grid cell
        # (cells never overlap, so one fancy-indexed read-modify-write per size is exact).
        for size, matrix in matrices.items():
            rows, slots = np.nonzero(active[start:stop] & (sizes[start:stop] == size))
            if len(rows) == 0:
                continue
            alpha = (matrix @ scans[scan_ids[start + rows, slots]] @ matrix.T)[..., None]  # [k, size, size, 1]
            ys = top[start + rows, slots][:, None] + np.arange(size)  # [k, size]
            xs = left[start + rows, slots][:, None] + np.arange(size)
            index = (rows[:, None, None], ys[:, :, None], xs[:, None, :])
            ink = colours[start + rows, slots][:, None, None, :]  # [k, 1, 1, 3]
            canvases[index] = canvases[index] * (1.0 - alpha) + ink * alpha
        np.clip(canvases, 0.0, 255.0, out=canvases)
        pixels = canvases.astype(np.uint8)
        for row, encoded in enumerate(encoder.map(_encode_png, pixels)):
            index = start + row
            columns["image"].append({"bytes": encoded, "path": None})
            columns["labels"].append(sorted({int(digit) for digit in classes[index, : counts[index]]}))
            columns["source_scans"].append([int(scan) for scan in scan_ids[index, : counts[index]]])
            progress.update(1)
    progress.close()
    encoder.shutdown()
    return columns


def _parameters(
    num_train: int,
    num_validation: int,
    num_test: int,
    image_size: int,
    min_digits: int,
    max_digits: int,
    digit_size: tuple[int, int] | None,
    seed: int,
    scan_fractions: tuple[float, float, float],
) -> dict:
    if min(num_train, num_validation, num_test) < 1:
        raise ValueError("num_train, num_validation and num_test must all be >= 1.")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"Need 1 <= min_digits <= max_digits, got {min_digits} and {max_digits}.")
    grid = math.ceil(math.sqrt(max_digits))
    cell = image_size // grid
    if digit_size is None:
        digit_size = (max(8, cell // 2), cell)
    low, high = int(digit_size[0]), int(digit_size[1])
    if not 4 <= low <= high <= cell:
        raise ValueError(
            f"digit_size {digit_size} must satisfy 4 <= min <= max <= {cell} (the {grid}x{grid} grid cell of a "
            f"{image_size}-pixel canvas with up to {max_digits} digits)."
        )
    return {
        "version": _FORMAT_VERSION,
        "num_train": int(num_train),
        "num_validation": int(num_validation),
        "num_test": int(num_test),
        "image_size": int(image_size),
        "min_digits": int(min_digits),
        "max_digits": int(max_digits),
        "digit_size": [low, high],
        "seed": int(seed),
        "scan_fractions": [float(fraction) for fraction in scan_fractions],
    }


def _cache_path(parameters: dict, cache_dir: str | os.PathLike | None) -> str:
    key = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:16]
    root = os.fspath(cache_dir) if cache_dir is not None else _default_cache_root()
    return os.path.join(root, "digits-mosaic", key)


def digits_mosaic_cache_path(cache_dir: str | os.PathLike | None = None, **parameters: Any) -> str:
    """The folder where [`load_digits_mosaic`] caches the dataset for these parameters (same keywords)."""
    unknown = set(parameters) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"Unknown digits-mosaic parameter(s): {sorted(unknown)}.")
    return _cache_path(_parameters(**{**_DEFAULTS, **parameters}), cache_dir)


def load_digits_mosaic(
    split: str | None = None,
    *,
    num_train: int = 4000,
    num_validation: int = 500,
    num_test: int = 1000,
    image_size: int = 64,
    min_digits: int = 1,
    max_digits: int = 4,
    digit_size: tuple[int, int] | None = None,
    seed: int = 0,
    scan_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    cache_dir: str | os.PathLike | None = None,
    overwrite_cache: bool = False,
) -> datasets.Dataset | datasets.DatasetDict:
    """Build (or load from the cache) the `digits-mosaic` multi-label dataset.

    Args:
        split: `"train"`, `"validation"` or `"test"`; `None` returns a `DatasetDict` with all three.
        num_train, num_validation, num_test: number of images per split.
        image_size: canvas side in pixels (RGB, square).
        min_digits, max_digits: number of digits per image, drawn uniformly in `[min_digits, max_digits]`.
        digit_size: `(min, max)` side of an upsampled digit in pixels. Digits sit in the cells of a
            `ceil(sqrt(max_digits))`-square grid; the default is `(max(8, cell // 2), cell)`, i.e. 16-32 px on the
            default 64-px canvas.
        seed: seed of every random draw (scan pools and images).
        scan_fractions: share of each digit class's scans reserved for train, validation and test.
        cache_dir: cache root (default `$SADCL_HF_CACHE`, else `~/.cache/sadcl_hf`); the data lives in
            `<cache_dir>/digits-mosaic/<key>`.
        overwrite_cache: regenerate even if a cached copy exists.

    Returns:
        Columns `image` (PNG bytes, decoded lazily), `labels` (`List(ClassLabel(names=["0", ..., "9"]))`) and
        `source_scans` (the `sklearn.datasets.load_digits` indices drawn in the image, for provenance).
    """
    if split is not None and split not in DIGITS_MOSAIC_SPLITS:
        raise ValueError(f"Unknown digits-mosaic split {split!r}; expected one of {list(DIGITS_MOSAIC_SPLITS)}.")
    options = {
        "num_train": num_train,
        "num_validation": num_validation,
        "num_test": num_test,
        "image_size": image_size,
        "min_digits": min_digits,
        "max_digits": max_digits,
        "digit_size": digit_size,
        "seed": seed,
        "scan_fractions": tuple(scan_fractions),
    }
    parameters = _parameters(**options)
    path = _cache_path(parameters, cache_dir)

    if os.path.isfile(os.path.join(path, "dataset_dict.json")) and not overwrite_cache:
        dataset_dict = datasets.load_from_disk(path)
    else:
        dataset_dict = _build(parameters)
        _save_atomically(dataset_dict, path, parameters)
        dataset_dict = datasets.load_from_disk(path)
    return dataset_dict[split] if split is not None else dataset_dict


def _build(parameters: dict) -> datasets.DatasetDict:
    scans, targets = _load_scans()
    pools = digits_mosaic_scan_pools(parameters["seed"], tuple(parameters["scan_fractions"]))
    features = multilabel_features(DIGIT_CLASSES)
    features["source_scans"] = datasets.List(datasets.Value("int32"))
    sizes = {
        "train": parameters["num_train"],
        "validation": parameters["num_validation"],
        "test": parameters["num_test"],
    }
    splits = {}
    for split_index, name in enumerate(DIGITS_MOSAIC_SPLITS):
        columns = _generate_split(
            sizes[name],
            pools[name],
            scans,
            targets,
            image_size=parameters["image_size"],
            min_digits=parameters["min_digits"],
            max_digits=parameters["max_digits"],
            digit_size=tuple(parameters["digit_size"]),
            rng=np.random.default_rng([parameters["seed"], split_index]),
            description=name,
        )
        info = datasets.DatasetInfo(
            description=(
                "digits-mosaic: 1-4 handwritten digits (sklearn load_digits scans) on a noisy canvas; "
                f"labels = digits present. Parameters: {json.dumps(parameters, sort_keys=True)}"
            ),
            features=features,
        )
        splits[name] = datasets.Dataset.from_dict(columns, features=features, info=info)
    return datasets.DatasetDict(splits)


def _save_atomically(dataset_dict: datasets.DatasetDict, path: str, parameters: dict) -> None:
    """Write to a temporary sibling folder, then rename, so readers never see a half-written cache."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    dataset_dict.save_to_disk(staging)
    with open(os.path.join(staging, "parameters.json"), "w", encoding="utf-8") as handle:
        json.dump(parameters, handle, indent=2, sort_keys=True)
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    try:
        os.replace(staging, path)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not os.path.isfile(os.path.join(path, "dataset_dict.json")):
            raise
    logger.info("Cached digits-mosaic at %s", path)


def digits_mosaic_examples(directory: str | os.PathLike, num_examples: int = 8, **dataset_options: Any) -> list[Path]:
    """Writes the first `num_examples` digits-mosaic test images to `directory/test_<i>.png` (kept if present) and
    returns their paths; `dataset_options` go to [`load_digits_mosaic`]."""

    directory = Path(directory)
    paths = [directory / f"test_{index}.png" for index in range(num_examples)]
    if all(path.is_file() for path in paths):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    test_split = load_digits_mosaic(split="test", **dataset_options)
    for path, image in zip(paths, test_split.select(range(num_examples))["image"]):
        image.save(path)
    return paths


def default_examples(label_names: Sequence[str], directory: str | os.PathLike, num_examples: int = 8) -> list[Path]:
    """[`digits_mosaic_examples`] for a model whose labels are the digits "0" ... "9" (the demo's), else none."""
    if num_examples < 1 or tuple(label_names) != DIGIT_CLASSES:
        return []
    return digits_mosaic_examples(directory, num_examples)
