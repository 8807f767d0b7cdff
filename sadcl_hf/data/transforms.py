"""Image transforms of the SADCL training and evaluation pipelines (torchvision.transforms.v2).

Training (the SADCL / ML-GCN recipe): resize to `image_size + resize_margin` square, TSN-style multi-scale crop
resized to `image_size`, horizontal flip, optional RandAugment and Cutout, then float tensor + normalisation.
Evaluation: resize to `(image_size, image_size)` + normalisation. Both start by converting the image to 8-bit RGB
with [`load_image`] (EXIF orientation, grayscale / palette / alpha / CMYK / 16-bit inputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import PIL.Image
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .images import load_image


__all__ = [
    "DEFAULT_CROP_SCALES",
    "ConvertToRGB",
    "MultiScaleCrop",
    "build_eval_transform",
    "build_train_transform",
]

DEFAULT_CROP_SCALES = (1.0, 0.875, 0.75, 0.66, 0.5)


class ConvertToRGB(v2.Transform):
    """Convert a PIL image (any mode, EXIF-rotated or not) to an upright 8-bit RGB PIL image via [`load_image`].

    Tensors pass through unchanged.
    """

    _transformed_types = (PIL.Image.Image,)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return load_image(inpt)


class MultiScaleCrop(v2.Transform):
    """The multi-scale crop of TSN (Wang et al., 2016), as used by ML-GCN, Query2Label and SADCL.

    With `base = min(height, width)`, the candidate crop sides are `int(base * scale)` for each scale (snapped to the
    output side when within 3 pixels). A crop `(width_j, height_i)` is drawn uniformly among the pairs with
    `|i - j| <= max_distort`, placed at an offset drawn from the 13 fixed grid positions of TSN (corners, centre,
    edge centres and quarter points; `fixed_offsets=True`, the reference behaviour) or uniformly
    (`fixed_offsets=False`), then resized to `size`. Randomness comes from `torch`'s generator, so `torch.manual_seed`
    and DataLoader worker seeding apply.

    Args:
        size: output side (int) or `(height, width)`.
        scales: relative crop sides.
        max_distort: largest allowed difference between the width and height scale indices.
        fixed_offsets: draw the offset from TSN's 13 fixed positions instead of uniformly.
        interpolation: resize interpolation.
    """

    def __init__(
        self,
        size: Union[int, Sequence[int]],
        scales: Sequence[float] = DEFAULT_CROP_SCALES,
        max_distort: int = 2,
        fixed_offsets: bool = True,
        interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(size, int):
            size = (size, size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}.")
        if not scales or any(not 0 < scale <= 1 for scale in scales):
            raise ValueError(f"scales must be a non-empty sequence of numbers in (0, 1], got {scales!r}.")
        if max_distort < 0:
            raise ValueError(f"max_distort must be >= 0, got {max_distort}.")
        self.size = (int(size[0]), int(size[1]))
        self.scales = tuple(float(scale) for scale in scales)
        self.max_distort = int(max_distort)
        self.fixed_offsets = bool(fixed_offsets)
        self.interpolation = interpolation
        self.antialias = antialias

    def crop_candidates(self, height: int, width: int) -> list[tuple[int, int]]:
        """The `(crop_height, crop_width)` pairs allowed for an input of this size."""
        base = min(height, width)
        sides = [int(base * scale) for scale in self.scales]
        crop_heights = [self.size[0] if abs(side - self.size[0]) < 3 else side for side in sides]
        crop_widths = [self.size[1] if abs(side - self.size[1]) < 3 else side for side in sides]
        return [
            (max(1, min(crop_height, height)), max(1, min(crop_width, width)))
            for i, crop_height in enumerate(crop_heights)
            for j, crop_width in enumerate(crop_widths)
            if abs(i - j) <= self.max_distort
        ]

    @staticmethod
    def fixed_offset_candidates(height: int, width: int, crop_height: int, crop_width: int) -> list[tuple[int, int]]:
        """TSN's 13 `(top, left)` positions: corners, centre, edge centres and the four quarter points."""
        step_y, step_x = (height - crop_height) // 4, (width - crop_width) // 4
        grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
        return [(row * step_y, column * step_x) for row, column in grid]

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = F.get_size(flat_inputs[0])
        candidates = self.crop_candidates(height, width)
        crop_height, crop_width = candidates[int(torch.randint(len(candidates), ()).item())]
        if self.fixed_offsets:
            offsets = self.fixed_offset_candidates(height, width, crop_height, crop_width)
            top, left = offsets[int(torch.randint(len(offsets), ()).item())]
        else:
            top = int(torch.randint(height - crop_height + 1, ()).item())
            left = int(torch.randint(width - crop_width + 1, ()).item())
        return {"top": top, "left": left, "height": crop_height, "width": crop_width}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.resized_crop,
            inpt,
            **params,
            size=list(self.size),
            interpolation=self.interpolation,
            antialias=self.antialias,
        )


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def build_train_transform(
    image_size: int,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    resize_margin: int = 64,
    scales: Sequence[float] = DEFAULT_CROP_SCALES,
    max_distort: int = 2,
    hflip: bool = True,
    randaugment: bool = False,
    cutout: bool = False,
    fixed_offsets: bool = True,
) -> v2.Compose:
    """The SADCL training transform: PIL image (any mode) -> normalised float tensor `[3, image_size, image_size]`.

    Steps: RGB conversion, resize to `(image_size + resize_margin)` square, [`MultiScaleCrop`] to `image_size`,
    random horizontal flip, optional RandAugment (torchvision defaults: 2 ops, magnitude 9), tensor + normalise,
    optional Cutout (`RandomErasing(p=0.5, scale=(0.02, 0.25))` filling with 0, i.e. the mean colour after
    normalisation). The official SADCL code uses either the crop pipeline or RandAugment (+ Cutout); here they can
    be combined.
    """
    if image_size < 1 or resize_margin < 0:
        raise ValueError(f"Need image_size >= 1 and resize_margin >= 0, got {image_size} and {resize_margin}.")
    steps: list[v2.Transform] = [
        ConvertToRGB(),
        v2.Resize((image_size + resize_margin, image_size + resize_margin), antialias=True),
        MultiScaleCrop(image_size, scales=scales, max_distort=max_distort, fixed_offsets=fixed_offsets),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        steps.append(v2.RandAugment())
    steps.extend(_to_normalized_tensor(mean, std))
    if cutout:
        steps.append(v2.RandomErasing(p=0.5, scale=(0.02, 0.25), value=0))
    return v2.Compose(steps)


def build_eval_transform(
    image_size: int,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> v2.Compose:
    """The evaluation transform: PIL image (any mode) -> normalised float tensor `[3, image_size, image_size]`."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}.")
    return v2.Compose(
        [ConvertToRGB(), v2.Resize((image_size, image_size), antialias=True), *_to_normalized_tensor(mean, std)]
    )
