"""Robust image opening shared by the data loaders, the collator and the inference pipeline.

Every image that enters sadcl-hf goes through [`load_image`], which returns a fully decoded 8-bit RGB
`PIL.Image.Image` or raises [`ImageLoadError`] naming the file and the reason. It handles:

* sources: a path, raw encoded bytes, a `PIL.Image.Image`, a `datasets.Image` storage dict
  (`{"path": ..., "bytes": ...}`) or a `numpy` array (`[H, W]`, `[H, W, 1|3|4]`, `uint8`);
* EXIF orientation (`PIL.ImageOps.exif_transpose`);
* pixel modes: grayscale (`1`, `L`), palette (`P`, `PA`), alpha (`RGBA`, `LA`, ... composited over white),
  `CMYK`, `YCbCr`, `LAB`, `HSV`, and 16/32-bit integer grayscale (`I;16*`, `I`; rescaled from 0..65535 to 0..255);
* truncated or corrupt files, missing files and decompression bombs (images larger than
  `PIL.Image.MAX_IMAGE_PIXELS`), which all raise [`ImageLoadError`].
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any, Union

import numpy as np
import PIL.Image
import PIL.ImageOps


__all__ = ["ImageLoadError", "ImageSource", "describe_image_source", "load_image"]

ImageSource = Union[str, os.PathLike, bytes, bytearray, PIL.Image.Image, dict, np.ndarray]

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageLoadError(ValueError):
    """An image could not be opened or decoded.

    Attributes:
        source (`str`): the file path, or a short description of an in-memory source.
        reason (`str`): what went wrong and what was expected.
    """

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"Cannot load image {source}: {reason}")

    def __reduce__(self):
        return (type(self), (self.source, self.reason))


def describe_image_source(source: Any) -> str:
    """A short human-readable name for an image source (its path where there is one)."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, dict):
        if source.get("path"):
            return str(source["path"])
        data = source.get("bytes")
        return f"<{len(data)} encoded bytes>" if data is not None else "<empty image dict>"
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} encoded bytes>"
    if isinstance(source, PIL.Image.Image):
        filename = getattr(source, "filename", None)
        return filename if filename else f"<PIL image mode={source.mode} size={source.size}>"
    if isinstance(source, np.ndarray):
        return f"<array shape={source.shape} dtype={source.dtype}>"
    return f"<{type(source).__name__}>"


def _check_pixel_budget(image: PIL.Image.Image, name: str) -> None:
    limit = PIL.Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        raise ImageLoadError(
            name,
            f"{image.width}x{image.height} = {image.width * image.height} pixels exceeds the decompression-bomb "
            f"limit of {limit} pixels (PIL.Image.MAX_IMAGE_PIXELS); raise that limit if the file is trusted",
        )


def _open_encoded(data: bytes, name: str) -> PIL.Image.Image:
    if len(data) == 0:
        raise ImageLoadError(name, "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(data))
    except PIL.Image.DecompressionBombError as error:
        raise ImageLoadError(name, f"decompression bomb: {error}") from error
    except PIL.UnidentifiedImageError as error:
        raise ImageLoadError(name, "not a recognised image format (corrupt file or not an image)") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(name, f"corrupt or truncated image header ({error})") from error
    _check_pixel_budget(image, name)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(name, f"corrupt or truncated image data ({error})") from error
    return image


def _read_path(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as error:
        raise ImageLoadError(path, "file not found") from error
    except IsADirectoryError as error:
        raise ImageLoadError(path, "is a directory, expected an image file") from error
    except OSError as error:
        raise ImageLoadError(path, f"cannot read the file ({error.strerror or error})") from error


def _from_array(array: np.ndarray, name: str) -> PIL.Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ImageLoadError(name, "expected an array of shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]")
    if array.dtype != np.uint8:
        raise ImageLoadError(name, f"expected a uint8 array, got {array.dtype}")
    return PIL.Image.fromarray(np.ascontiguousarray(array))


def _to_rgb(image: PIL.Image.Image, name: str) -> PIL.Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        values = np.clip(values, 0, 65535) / 257.0
        return PIL.Image.fromarray(np.round(values).astype(np.uint8)).convert("RGB")
    if mode == "F":
        raise ImageLoadError(name, "floating-point pixels (mode 'F') are not supported; expected 8- or 16-bit images")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ImageLoadError(name, f"cannot convert pixel mode {mode!r} to RGB ({error})") from error


def load_image(source: ImageSource) -> PIL.Image.Image:
    """Open `source` as a fully decoded 8-bit RGB image, upright according to its EXIF orientation.

    Args:
        source: a file path, encoded bytes, a `PIL.Image.Image`, a `datasets.Image` storage dict
            (`{"path": str | None, "bytes": bytes | None}`) or a `uint8` array `[H, W]`/`[H, W, C]`.

    Returns:
        `PIL.Image.Image` in mode `"RGB"`; `source` itself when it already is an upright RGB PIL image
        (`source` is never modified).

    Raises:
        ImageLoadError: the file is missing, empty, corrupt, truncated, not an image, larger than
            `PIL.Image.MAX_IMAGE_PIXELS`, or has an unsupported pixel mode. The message names the file.
    """
    name = describe_image_source(source)
    if isinstance(source, dict):
        if source.get("bytes") is not None:
            image = _open_encoded(bytes(source["bytes"]), name)
        elif source.get("path"):
            image = _open_encoded(_read_path(os.fspath(source["path"])), name)
        else:
            raise ImageLoadError(name, "the image dict has neither 'bytes' nor 'path'")
    elif isinstance(source, (str, os.PathLike)):
        image = _open_encoded(_read_path(os.fspath(source)), name)
    elif isinstance(source, (bytes, bytearray)):
        image = _open_encoded(bytes(source), name)
    elif isinstance(source, PIL.Image.Image):
        _check_pixel_budget(source, name)
        try:
            source.load()
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise ImageLoadError(name, f"corrupt or truncated image data ({error})") from error
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source, name)
    else:
        raise ImageLoadError(
            name, "expected a path, encoded bytes, a PIL image, a {'path', 'bytes'} dict or a uint8 numpy array"
        )

    try:
        orientation = image.getexif().get(PIL.Image.ExifTags.Base.Orientation, 1)
        upright = PIL.ImageOps.exif_transpose(image) if orientation not in (1, None) else image
    except Exception as error:  # malformed EXIF blocks raise a variety of errors inside PIL
        warnings.warn(f"Ignoring unreadable EXIF orientation of image {name}: {error}", stacklevel=2)
        upright = image
    return _to_rgb(upright, name)
