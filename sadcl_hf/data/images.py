"""Robust image opening shared by the data loaders, the collator and the inference pipeline.

Every image that enters sadcl-hf goes through [`load_image`], which returns a fully decoded 8-bit RGB
`PIL.Image.Image` or raises [`ImageLoadError`] naming the file and the reason. It handles:

* sources: a path, raw encoded bytes, a `PIL.Image.Image`, a `datasets.Image` storage dict
  (`{"path": ..., "bytes": ...}`) or a `numpy` array (`[H, W]`, `[H, W, 1|3|4]`, `uint8`);
* EXIF orientation (`PIL.ImageOps.exif_transpose`);
* pixel modes: grayscale (`1`, `L`), palette (`P`, `PA`), alpha (`RGBA`, `LA`, ... composited over white),
  `CMYK`, `YCbCr`, `LAB`, `HSV`, and 16/32-bit integer grayscale (`I;16*`, `I`; rescaled from 0..65535 to 0..255);
* truncated or corrupt files, missing files and decompression bombs (images larger than
  `PIL.Image.MAX_IMAGE_PIXELS`, refused from the header before any pixel is decoded), which all raise
  [`ImageLoadError`];
* decoding at the size the model needs (`draft_size`): a JPEG is decoded with DCT-domain downscaling
  (`PIL.Image.draft`, 1/2, 1/4 or 1/8) to the smallest scale whose upright size is not below `DRAFT_MARGIN` times
  `draft_size`, so the image processor's own (antialiased) resize then works from far fewer pixels
  ([`processor_draft_size`] gives the size);
* URLs ([`fetch_url`]): a connect/read timeout, an overall deadline and a byte cap.

This module imports nothing from sadcl-hf: a saved model ships it beside its weights (remote code), so the stock
`pipeline("image-classification", trust_remote_code=True)` loads images this way without sadcl-hf installed.
"""

from __future__ import annotations

import io
import os
import time
import warnings
from typing import Any

import httpx
import numpy as np
import PIL.Image
import PIL.ImageOps

__all__ = [
    "DEFAULT_MAX_URL_BYTES",
    "DEFAULT_URL_TIMEOUT",
    "ImageLoadError",
    "ImageSource",
    "describe_image_source",
    "fetch_url",
    "load_image",
    "processor_draft_size",
]

DEFAULT_URL_TIMEOUT = 10.0
"""Seconds an image URL may take to connect, between two received bytes, and in all (see [`fetch_url`])."""
DEFAULT_MAX_URL_BYTES = 50 * 2**20
"""The largest image download accepted (50 MiB)."""

ImageSource = str | os.PathLike | bytes | bytearray | PIL.Image.Image | dict | np.ndarray

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations whose upright image swaps width and height
DRAFT_MARGIN = 2
"""A drafted JPEG keeps at least this many pixels per output pixel along each side, so that the processor's
antialiased resize still averages them: decoding at exactly the target size moved a trained tiny model's scores by
up to 0.020 on 4x digit mosaics, twice the target by 0.0005 (tests/test_draft_decoding.py)."""


class ImageLoadError(ValueError):
    """An image could not be opened or decoded.

    Attributes:
        source (`str`): the file path, or a short description of an in-memory source.
        reason (`str`): what went wrong and what was expected.
    """

    def __init__(self, source: str, reason: str | None = None):
        if reason is None:
            # torch re-raises a DataLoader worker's error as `type(error)(text)`, the text being "Caught ... Original
            # Traceback ...": keep the worker's own message (the traceback's last line), so the error stays one line.
            source, _, reason = (
                source.rstrip().rsplit(f"{type(self).__name__}: Cannot load image ", 1)[-1].partition(": ")
            )
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


def _orientation(image: PIL.Image.Image, name: str) -> int:
    """The EXIF orientation tag (1 = upright; 1 when it is missing or unreadable, with a warning)."""
    try:
        return int(image.getexif().get(PIL.Image.ExifTags.Base.Orientation, 1) or 1)
    except Exception as error:  # malformed EXIF blocks raise a variety of errors inside PIL
        warnings.warn(f"Ignoring unreadable EXIF orientation of image {name}: {error}", stacklevel=3)
        return 1


def _draft(image: PIL.Image.Image, draft_size: tuple[int, int], orientation: int) -> None:
    """Asks a JPEG decoder for DCT-domain downscaling to the smallest scale not below `DRAFT_MARGIN` times
    `draft_size` (upright `(width, height)`); other formats decode at full size."""
    width, height = DRAFT_MARGIN * draft_size[0], DRAFT_MARGIN * draft_size[1]
    if orientation in _TRANSPOSING_ORIENTATIONS:  # the stored image is the upright one turned by 90 degrees
        width, height = height, width
    if image.format == "JPEG":
        image.draft(None, (max(1, int(width)), max(1, int(height))))


def _open_encoded(data: bytes, name: str, draft_size: tuple[int, int] | None = None) -> PIL.Image.Image:
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
    if draft_size is not None:
        _draft(image, draft_size, _orientation(image, name))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(name, f"corrupt or truncated image data ({error})") from error
    return image


def fetch_url(url: str, timeout: float | None = DEFAULT_URL_TIMEOUT, max_bytes: int = DEFAULT_MAX_URL_BYTES) -> bytes:
    """The body of `url` (`http://` or `https://`), streamed and bounded.

    Args:
        timeout: seconds allowed to connect, between two received chunks, and for the whole download; `None`
            waits forever.
        max_bytes: the download is abandoned as soon as more bytes than this arrive (or are announced).

    Raises:
        ImageLoadError: naming the URL: no answer in time, too large, an HTTP error status or a network error.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    too_large = f"the download exceeds the limit of {max_bytes} bytes (max_bytes)"
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            response.raise_for_status()
            announced = response.headers.get("content-length", "")
            if announced.isdigit() and int(announced) > max_bytes:
                raise ImageLoadError(url, f"{too_large}: the server announces {announced} bytes")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise ImageLoadError(url, too_large)
                if deadline is not None and time.monotonic() > deadline:
                    raise ImageLoadError(url, f"the download took longer than {timeout} s (timeout)")
            return bytes(body)
    except httpx.TimeoutException as error:
        raise ImageLoadError(url, f"no answer within {timeout} s (timeout; {type(error).__name__})") from error
    except httpx.HTTPError as error:
        raise ImageLoadError(url, f"cannot download the image ({error})") from error


def processor_draft_size(image_processor: Any) -> tuple[int, int] | None:
    """The `draft_size` (upright `(width, height)`) at which [`load_image`] may decode images for
    `image_processor`: its fixed resize target `size={"height", "width"}`. `None` (decode at full size) when it
    does not resize, or resizes to a size that depends on the image's aspect (`shortest_edge`, `longest_edge`,
    ...), where the rounding of a scaled decode could change the output's size."""
    size = getattr(image_processor, "size", None)
    if not getattr(image_processor, "do_resize", False) or size is None:
        return None
    # a dict, or transformers' `SizeDict` (unset fields None)
    fields = dict(size) if isinstance(size, dict) else {key: getattr(size, key) for key in vars(size)}
    given = {key: value for key, value in fields.items() if value is not None}
    if given.keys() == {"height", "width"}:
        return int(given["width"]), int(given["height"])
    return None


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


def load_image(source: ImageSource, draft_size: tuple[int, int] | None = None) -> PIL.Image.Image:
    """Open `source` as a fully decoded 8-bit RGB image, upright according to its EXIF orientation.

    Args:
        source: a file path, encoded bytes, a `PIL.Image.Image`, a `datasets.Image` storage dict
            (`{"path": str | None, "bytes": bytes | None}`) or a `uint8` array `[H, W]`/`[H, W, C]`.
        draft_size: upright `(width, height)` the image will be resized to ([`processor_draft_size`]); an
            encoded JPEG is then decoded at the smallest DCT scale (1, 1/2, 1/4, 1/8) whose size is not below
            `DRAFT_MARGIN` (2) times it.
            `None` decodes at full size. Other sources and formats are unaffected.

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
            image = _open_encoded(bytes(source["bytes"]), name, draft_size)
        elif source.get("path"):
            image = _open_encoded(_read_path(os.fspath(source["path"])), name, draft_size)
        else:
            raise ImageLoadError(name, "the image dict has neither 'bytes' nor 'path'")
    elif isinstance(source, (str, os.PathLike)):
        image = _open_encoded(_read_path(os.fspath(source)), name, draft_size)
    elif isinstance(source, (bytes, bytearray)):
        image = _open_encoded(bytes(source), name, draft_size)
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

    upright = image
    if _orientation(image, name) != 1:
        try:
            upright = PIL.ImageOps.exif_transpose(image)
        except Exception as error:  # malformed EXIF blocks raise a variety of errors inside PIL
            warnings.warn(f"Ignoring unreadable EXIF orientation of image {name}: {error}", stacklevel=2)
    return _to_rgb(upright, name)
