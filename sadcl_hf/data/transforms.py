"""Image transforms of SADCL (torchvision.transforms.v2), applied to the upright RGB images of [`load_image`].

Training (the SADCL / ML-GCN recipe): resize to `image_size + resize_margin` square, TSN-style multi-scale crop
resized to `image_size` (both in one resampling of the original pixels), horizontal flip, optional RandAugment and
Cutout, then float tensor + normalisation. Evaluation has no transform of its own: it is the model's saved image
processor ([`sadcl_hf.image_processing.image_processor_for_config`]) wrapped by [`ImageProcessorTransform`], the
same preprocessing as calibration, prototypes, `predict` and the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "DEFAULT_CROP_SCALES",
    "ImageProcessorTransform",
    "MultiScaleCrop",
    "ToNormalizedTensor",
    "build_train_transform",
]

DEFAULT_CROP_SCALES = (1.0, 0.875, 0.75, 0.66, 0.5)


class MultiScaleCrop(v2.Transform):
    """The multi-scale crop of TSN (Wang et al., 2016), as used by ML-GCN, Query2Label and SADCL.

    With `base = min(height, width)`, the candidate crop sides are `int(base * scale)` for each scale (snapped to the
    output side when within 3 pixels). A crop `(width_j, height_i)` is drawn uniformly among the pairs with
    `|i - j| <= max_distort`, placed at an offset drawn from the 13 fixed grid positions of TSN (corners, centre,
    edge centres and quarter points; `fixed_offsets=True`, the reference behaviour) or uniformly
    (`fixed_offsets=False`), then resized to `size`. Randomness comes from `torch`'s generator, so `torch.manual_seed`
    and DataLoader worker seeding apply.

    With `input_size`, the crop is drawn as if the image had first been resized to `input_size` (the recipe's
    `image_size + resize_margin` square) and a PIL image is then resampled once, from the matching box of its
    original pixels, instead of twice (resize, then crop and resize); tensors take the two resizes.

    Args:
        size: output side (int) or `(height, width)`.
        scales: relative crop sides.
        max_distort: largest allowed difference between the width and height scale indices.
        fixed_offsets: draw the offset from TSN's 13 fixed positions instead of uniformly.
        interpolation: resize interpolation.
        antialias: antialiased resizing (always on for PIL images).
        input_size: side (int) or `(height, width)` the image is resized to before cropping; `None` crops the image
            as it is.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scales: Sequence[float] = DEFAULT_CROP_SCALES,
        max_distort: int = 2,
        fixed_offsets: bool = True,
        interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR,
        antialias: bool = True,
        input_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.size = _pair(size, "size")
        self.input_size = None if input_size is None else _pair(input_size, "input_size")
        if not scales or any(not 0 < scale <= 1 for scale in scales):
            raise ValueError(f"scales must be a non-empty sequence of numbers in (0, 1], got {scales!r}.")
        if max_distort < 0:
            raise ValueError(f"max_distort must be >= 0, got {max_distort}.")
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
        height, width = self.input_size or F.get_size(flat_inputs[0])
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
        if self.input_size is not None:
            if isinstance(inpt, PIL.Image.Image):
                return self._resample_box(inpt, params)
            inpt = self._call_kernel(
                F.resize, inpt, size=list(self.input_size), interpolation=self.interpolation, antialias=self.antialias
            )
        return self._call_kernel(
            F.resized_crop,
            inpt,
            **params,
            size=list(self.size),
            interpolation=self.interpolation,
            antialias=self.antialias,
        )

    def _resample_box(self, image: PIL.Image.Image, params: dict[str, Any]) -> PIL.Image.Image:
        """The crop `params` (in `input_size` coordinates) resized to `size`, from the original pixels."""
        (input_height, input_width), (height, width) = self.input_size, (image.height, image.width)
        box = (  # product first: a window reaching the border maps exactly onto it
            params["left"] * width / input_width,
            params["top"] * height / input_height,
            (params["left"] + params["width"]) * width / input_width,
            (params["top"] + params["height"]) * height / input_height,
        )
        resample = _PIL_RESAMPLE[self.interpolation]
        return image.resize((self.size[1], self.size[0]), resample=resample, box=box)


_PIL_RESAMPLE = {
    v2.InterpolationMode.NEAREST: PIL.Image.Resampling.NEAREST,
    v2.InterpolationMode.BILINEAR: PIL.Image.Resampling.BILINEAR,
    v2.InterpolationMode.BICUBIC: PIL.Image.Resampling.BICUBIC,
    v2.InterpolationMode.LANCZOS: PIL.Image.Resampling.LANCZOS,
    v2.InterpolationMode.BOX: PIL.Image.Resampling.BOX,
    v2.InterpolationMode.HAMMING: PIL.Image.Resampling.HAMMING,
}


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{name} must be a positive int or (height, width), got {size!r}.")
    return int(size[0]), int(size[1])


class ToNormalizedTensor(v2.Transform):
    """RGB PIL image or `uint8` tensor `[3, H, W]` -> float32 tensor `[3, H, W]`, `(pixels / 255 - mean) / std`.

    The same values as `ToImage`, `ToDtype(float32, scale=True)` and `Normalize(mean, std)` (to float rounding), in
    one conversion and two in-place passes.
    """

    _transformed_types = (PIL.Image.Image, torch.Tensor)

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must be 3 values each with std > 0, got {mean!r} and {std!r}.")
        self.mean = list(mean)
        self.std = list(std)
        self._offset = torch.tensor(mean, dtype=torch.float32).mul(255).view(3, 1, 1)
        self._scale = torch.tensor(std, dtype=torch.float32).mul(255).reciprocal().view(3, 1, 1)

    def transform(self, inpt: Any, params: dict[str, Any]) -> torch.Tensor:
        if isinstance(inpt, PIL.Image.Image):
            if inpt.mode != "RGB":
                raise ValueError(
                    f"ToNormalizedTensor expects an RGB image, got mode {inpt.mode!r}; open images with "
                    "sadcl_hf.data.load_image (as MultiLabelCollator does)."
                )
            inpt = F.pil_to_tensor(inpt)
        if inpt.dtype != torch.uint8 or inpt.ndim != 3 or inpt.shape[0] != 3:
            raise ValueError(f"expected a uint8 tensor [3, H, W], got {inpt.dtype} {list(inpt.shape)}.")
        pixels = torch.empty(inpt.shape, dtype=torch.float32).copy_(inpt)
        return pixels.sub_(self._offset).mul_(self._scale)


class ImageProcessorTransform:
    """A transformers image processor as a [`MultiLabelCollator`] transform: RGB image -> `pixel_values [3, H, W]`.

    With the model's saved processor ([`sadcl_hf.image_processing.image_processor_for_config`] or
    `AutoImageProcessor.from_pretrained`), batches get exactly the tensors the pipeline computes.
    """

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.image_processor).__name__})"

    def __call__(self, image: Any) -> torch.Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


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
    """The SADCL training transform: RGB PIL image (from [`load_image`]) -> normalised float tensor
    `[3, image_size, image_size]`.

    Steps: resize to `(image_size + resize_margin)` square and [`MultiScaleCrop`] to `image_size` (one resampling),
    random horizontal flip, optional RandAugment (torchvision defaults: 2 ops, magnitude 9), [`ToNormalizedTensor`],
    optional Cutout (`RandomErasing(p=0.5, scale=(0.02, 0.25))` filling with 0, i.e. the mean colour after
    normalisation). The official SADCL code uses either the crop pipeline or RandAugment (+ Cutout); here they can
    be combined.
    """
    if image_size < 1 or resize_margin < 0:
        raise ValueError(f"Need image_size >= 1 and resize_margin >= 0, got {image_size} and {resize_margin}.")
    steps: list[v2.Transform] = [
        MultiScaleCrop(
            image_size,
            scales=scales,
            max_distort=max_distort,
            fixed_offsets=fixed_offsets,
            input_size=image_size + resize_margin,
        )
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        steps.append(v2.RandAugment())
    steps.append(ToNormalizedTensor(mean, std))
    if cutout:
        steps.append(v2.RandomErasing(p=0.5, scale=(0.02, 0.25), value=0))
    return v2.Compose(steps)
