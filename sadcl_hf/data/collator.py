"""Batch collation for multi-label training with `transformers.Trainer` or a `torch.utils.data.DataLoader`."""

from __future__ import annotations

import logging
import numbers
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from .images import ImageLoadError, load_image

__all__ = ["MultiLabelCollator", "TooManyUnreadableImagesError", "read_unreadable_list"]

logger = logging.getLogger(__name__)


class TooManyUnreadableImagesError(RuntimeError):
    """More than `max_unreadable_fraction` of the images a [`MultiLabelCollator`] saw were unreadable."""

    def __init__(self, message: str):
        # A DataLoader worker's error is re-raised with torch's "Caught ... Original Traceback ..." text as the
        # message: keep the collator's own (the traceback's last line), so the error stays one line.
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rstrip().rsplit(marker, 1)[1]
        super().__init__(message)


def read_unreadable_list(path: str | os.PathLike) -> list[str]:
    """The distinct image files recorded in a collator's `unreadable_list` file (empty when it does not exist)."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return list(dict.fromkeys(line.rstrip("\n") for line in handle if line.strip()))


class MultiLabelCollator:
    """Turn examples `{image, labels}` into `{"pixel_values": [B, 3, H, W] float, "labels": [B, K] float multi-hot}`.

    Each example is a mapping with an image (a `PIL.Image.Image`, a path, encoded bytes or a `datasets.Image`
    storage dict `{"path", "bytes"}`) and a list of class ids. Every image goes through [`load_image`] (RGB, EXIF
    orientation; the only decoding on this path) and then `transform`. The collator is a plain picklable object, so
    it works with `DataLoader(num_workers > 0)` and with `transformers.Trainer(..., data_collator=collator)` given
    `TrainingArguments(remove_unused_columns=False)`.

    Unreadable images (corrupt, truncated, not an image): with `max_unreadable_fraction=0` the first one raises
    [`ImageLoadError`]. Above 0, the collator skips them: a warning names each file once (`unreadable_list`, when
    given, records them for every dataloader worker and process), and the example is replaced by another readable
    example of the batch (freshly transformed, so with another augmentation), so batches keep their size
    (`gather_contrastive_features` needs equal batches on every process); with `drop_unreadable=True` (evaluation,
    prototypes) the example and its label row leave the batch instead, so metrics are computed over the readable
    images only. A single unreadable file never stops a run; from a second one on, [`TooManyUnreadableImagesError`]
    stops it once more than `max_unreadable_fraction` of the images seen were unreadable. That fraction is the
    process's, not one dataloader worker's: workers of one `DataLoader` iteration (they are given batches in turn)
    record the files they meet in `{unreadable_list}.workers`, and each judges their union over its own count times
    the number of workers (without `unreadable_list`, a worker judges its own share). Processes of a distributed run
    each judge their own equal share. The failure only reaches the collator when the images are decoded here:
    `dataset.cast_column("image", datasets.Image(decode=False))` (as `run_training` does).

    Args:
        num_labels: number of classes K.
        transform: callable RGB PIL image -> float tensor `[3, H, W]`: [`build_train_transform`] for training,
            [`ImageProcessorTransform`] of the model's image processor for evaluation. `None` converts to a float
            tensor in [0, 1] without resizing (all images of a batch must then share a size).
        image_column: key of the image in each example.
        label_column: key of the class-id list in each example.
        max_unreadable_fraction: the largest fraction of unreadable examples to skip (see above); 0 raises at the
            first one.
        unreadable_list: a text file to which each skipped image file is appended (one path per line); shared by
            dataloader workers and processes, it makes the warnings once per file and gives the run's count
            ([`read_unreadable_list`]).
        draft_size: upright `(width, height)` the transform resizes to; JPEGs are then decoded at the smallest DCT
            scale not below twice it ([`load_image`], [`processor_draft_size`]); for evaluation: training keeps
            `None`, the full decode, for its random crops.
        drop_unreadable: remove unreadable examples from their batch (evaluation: a duplicate would bias the
            metrics) instead of replacing them; a batch of only unreadable images is then empty (`[0, 3, H, W]`,
            `H, W` from `draft_size`).
    """

    def __init__(
        self,
        num_labels: int,
        transform: Callable[[Any], torch.Tensor] | None = None,
        image_column: str = "image",
        label_column: str = "labels",
        max_unreadable_fraction: float = 0.0,
        unreadable_list: str | os.PathLike | None = None,
        draft_size: tuple[int, int] | None = None,
        drop_unreadable: bool = False,
    ) -> None:
        if not isinstance(num_labels, numbers.Integral) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}.")
        if (
            isinstance(max_unreadable_fraction, bool)
            or not isinstance(max_unreadable_fraction, numbers.Real)
            or not (0.0 <= max_unreadable_fraction <= 1.0)
        ):
            raise ValueError(f"max_unreadable_fraction must be a number in [0, 1], got {max_unreadable_fraction!r}.")
        self.num_labels = int(num_labels)
        self.transform = (
            transform if transform is not None else v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
        )
        self.image_column = image_column
        self.label_column = label_column
        self.max_unreadable_fraction = float(max_unreadable_fraction)
        self.unreadable_list = os.fspath(unreadable_list) if unreadable_list is not None else None
        self.draft_size = draft_size
        self.drop_unreadable = bool(drop_unreadable)
        self.num_seen = 0
        self.num_unreadable = 0
        self.unreadable_files: set[str] = set()
        self._family = uuid.uuid4().hex  # shared by this collator's copies in dataloader workers
        self._reserve: tuple[Any, torch.Tensor] | None = None  # a readable (image, target) of an earlier batch

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_labels={self.num_labels}, image_column={self.image_column!r}, "
            f"label_column={self.label_column!r}, max_unreadable_fraction={self.max_unreadable_fraction})"
        )

    def encode_labels(self, label_ids: Any, position: int) -> torch.Tensor:
        """Multi-hot float vector `[K]` of the class ids of the example at `position` in the batch."""
        if isinstance(label_ids, torch.Tensor):
            label_ids = label_ids.tolist()
        elif isinstance(label_ids, np.ndarray):
            label_ids = label_ids.tolist()
        if isinstance(label_ids, (str, bytes)) or not isinstance(label_ids, Sequence):
            raise ValueError(
                f"Example {position}: {self.label_column!r} must be a list of class ids, got {label_ids!r}."
            )
        target = torch.zeros(self.num_labels, dtype=torch.float32)
        for label_id in label_ids:
            if isinstance(label_id, bool) or not isinstance(label_id, numbers.Integral):
                raise ValueError(
                    f"Example {position}: {self.label_column!r} must hold integer class ids, got {label_id!r} "
                    "(class names must be converted to ids, e.g. with sadcl_hf.data.from_hub_dataset)."
                )
            if not 0 <= label_id < self.num_labels:
                raise ValueError(
                    f"Example {position}: label id {int(label_id)} is out of range for num_labels={self.num_labels} "
                    f"(expected 0 <= id < {self.num_labels})."
                )
            target[int(label_id)] = 1.0
        return target

    def _pixels(self, image: Any) -> torch.Tensor:
        pixels = self.transform(image)
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 3 or pixels.shape[0] != 3:
            raise ValueError(
                f"The transform must return a float tensor [3, H, W]; got "
                f"{tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__}."
            )
        return pixels.to(torch.float32)

    def _counts(self, new_source: str | None) -> tuple[int, int, int]:
        """(unreadable images, distinct unreadable files, images seen) of this process's dataloader iteration (see
        the class docstring), after recording `new_source`, a file this copy had not met."""
        worker = torch.utils.data.get_worker_info()
        if worker is None or self.unreadable_list is None:
            return self.num_unreadable, len(self.unreadable_files), self.num_seen
        iteration = f"{self._family}-{worker.seed - worker.id}\t"  # workers' seeds are one base seed plus their id
        shared = f"{self.unreadable_list}.workers"
        if new_source is not None:
            with open(shared, "a", encoding="utf-8") as handle:
                handle.write(f"{iteration}{new_source}\n")
        files = {line[len(iteration) :] for line in read_unreadable_list(shared) if line.startswith(iteration)}
        return len(files), len(files), self.num_seen * worker.num_workers

    def _record_unreadable(self, error: ImageLoadError) -> None:
        """Counts a skipped example, warns once per file, and stops when too many of the seen ones were unreadable."""
        self.num_unreadable += 1
        new_source = error.source if error.source not in self.unreadable_files else None
        if new_source is not None:
            self.unreadable_files.add(error.source)
            already_listed = False
            if self.unreadable_list is not None:
                already_listed = error.source in read_unreadable_list(self.unreadable_list)
                if not already_listed:
                    with open(self.unreadable_list, "a", encoding="utf-8") as handle:
                        handle.write(error.source + "\n")
            if not already_listed:
                logger.warning("Skipping unreadable image %s: %s", error.source, error.reason)
        num_unreadable, num_files, num_seen = self._counts(new_source)
        if num_files > 1 and num_unreadable > self.max_unreadable_fraction * num_seen:
            listed = f"; all are listed in {self.unreadable_list}" if self.unreadable_list is not None else ""
            raise TooManyUnreadableImagesError(
                f"{num_unreadable} of the {num_seen} images seen were unreadable, more than "
                f"max_unreadable_fraction={self.max_unreadable_fraction:g} (latest: {error.source}: {error.reason})"
                f"{listed}. Fix or remove those files, or raise max_unreadable_fraction."
            )

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        images, targets, unreadable_positions = [], [], []
        for position, example in enumerate(examples):
            for column in (self.image_column, self.label_column):
                if column not in example:
                    raise KeyError(
                        f"Example {position} has no {column!r} key (keys: {sorted(example)}). With "
                        "transformers.Trainer set TrainingArguments(remove_unused_columns=False)."
                    )
            target = self.encode_labels(example[self.label_column], position)
            self.num_seen += 1
            try:
                image = load_image(example[self.image_column], draft_size=self.draft_size)
            except ImageLoadError as error:
                if self.max_unreadable_fraction == 0.0:
                    raise
                self._record_unreadable(error)
                unreadable_positions.append(position)
                images.append(None)
                targets.append(None)
                continue
            images.append(image)
            targets.append(target)
        readable = [(image, target) for image, target in zip(images, targets) if image is not None]
        if self.drop_unreadable:
            if not readable:
                width, height = self.draft_size if self.draft_size is not None else (0, 0)
                return {
                    "pixel_values": torch.zeros(0, 3, height, width),
                    "labels": torch.zeros(0, self.num_labels),
                }
            images, targets = (list(column) for column in zip(*readable))
        elif readable:
            self._reserve = readable[-1]
        elif self._reserve is not None:
            readable = [self._reserve]
        else:
            raise ImageLoadError(
                f"<batch of {len(examples)}>", "every image of the batch is unreadable and none was read before"
            )
        for count, position in enumerate(unreadable_positions if not self.drop_unreadable else []):
            images[position], targets[position] = readable[count % len(readable)]
        pixel_values = [self._pixels(image) for image in images]
        shapes = {tuple(pixels.shape) for pixels in pixel_values}
        if len(shapes) > 1:
            raise ValueError(
                f"Images of the batch have different sizes {sorted(shapes)}; pass a transform that resizes, "
                "e.g. sadcl_hf.data.ImageProcessorTransform(image_processor)."
            )
        return {"pixel_values": torch.stack(pixel_values), "labels": torch.stack(targets)}
