"""Batch collation for multi-label training with `transformers.Trainer` or a `torch.utils.data.DataLoader`."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

import numpy as np
import torch
from torchvision.transforms import v2

from .images import ImageLoadError, load_image


__all__ = ["MultiLabelCollator"]

logger = logging.getLogger(__name__)


class MultiLabelCollator:
    """Turn examples `{image, labels}` into `{"pixel_values": [B, 3, H, W] float, "labels": [B, K] float multi-hot}`.

    Each example is a mapping with an image (a `PIL.Image.Image`, a path, encoded bytes or a `datasets.Image`
    storage dict `{"path", "bytes"}`) and a list of class ids. Every image goes through [`load_image`] (RGB, EXIF
    orientation; the only decoding on this path) and then `transform`. The collator is a plain picklable object, so
    it works with `DataLoader(num_workers > 0)` and with `transformers.Trainer(..., data_collator=collator)` given
    `TrainingArguments(remove_unused_columns=False)`.

    To skip unreadable files at training time, keep the images undecoded so the failure reaches the collator:
    `dataset.cast_column("image", datasets.Image(decode=False))` with `skip_unreadable=True`.

    Args:
        num_labels: number of classes K.
        transform: callable RGB PIL image -> float tensor `[3, H, W]`: [`build_train_transform`] for training,
            [`ImageProcessorTransform`] of the model's image processor for evaluation. `None` converts to a float
            tensor in [0, 1] without resizing (all images of a batch must then share a size).
        image_column: key of the image in each example.
        label_column: key of the class-id list in each example.
        skip_unreadable: drop examples whose image cannot be loaded (a warning reports how many) instead of raising
            [`ImageLoadError`].
    """

    def __init__(
        self,
        num_labels: int,
        transform: Optional[Callable[[Any], torch.Tensor]] = None,
        image_column: str = "image",
        label_column: str = "labels",
        skip_unreadable: bool = False,
    ) -> None:
        if not isinstance(num_labels, numbers.Integral) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}.")
        self.num_labels = int(num_labels)
        self.transform = transform if transform is not None else v2.Compose(
            [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        )
        self.image_column = image_column
        self.label_column = label_column
        self.skip_unreadable = skip_unreadable

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_labels={self.num_labels}, image_column={self.image_column!r}, "
            f"label_column={self.label_column!r}, skip_unreadable={self.skip_unreadable})"
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

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        pixel_values, targets, failures = [], [], []
        for position, example in enumerate(examples):
            for column in (self.image_column, self.label_column):
                if column not in example:
                    raise KeyError(
                        f"Example {position} has no {column!r} key (keys: {sorted(example)}). With "
                        "transformers.Trainer set TrainingArguments(remove_unused_columns=False)."
                    )
            target = self.encode_labels(example[self.label_column], position)
            try:
                image = load_image(example[self.image_column])
            except ImageLoadError as error:
                if not self.skip_unreadable:
                    raise
                failures.append(error)
                continue
            pixels = self.transform(image)
            if not isinstance(pixels, torch.Tensor) or pixels.ndim != 3 or pixels.shape[0] != 3:
                raise ValueError(
                    f"The transform must return a float tensor [3, H, W]; got "
                    f"{tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__}."
                )
            pixel_values.append(pixels.to(torch.float32))
            targets.append(target)
        if failures:
            logger.warning(
                "Skipped %d unreadable image(s) out of %d in a batch, e.g. %s",
                len(failures),
                len(examples),
                failures[0],
            )
        if not pixel_values:
            raise ImageLoadError(f"<batch of {len(examples)}>", "every image in the batch is unreadable")
        shapes = {tuple(pixels.shape) for pixels in pixel_values}
        if len(shapes) > 1:
            raise ValueError(
                f"Images of the batch have different sizes {sorted(shapes)}; pass a transform that resizes, "
                "e.g. sadcl_hf.data.ImageProcessorTransform(image_processor)."
            )
        return {"pixel_values": torch.stack(pixel_values), "labels": torch.stack(targets)}
