"""The stock `pipeline("image-classification")` for SADCL models, with the package's image loading.

transformers' `ImageClassificationPipeline` opens its inputs itself (`transformers.image_utils.load_image`: a full
decode before any size check, 16-bit and transparent palette images converted unlike [`load_image`], raw PIL
errors), before the image processor sees them, so the image processor cannot fix that. This subclass loads every
input through [`load_pipeline_image`] instead, as the multi-label pipeline (its subclass) does: the same
decompression-bomb refusal before decoding, EXIF orientation, pixel modes, [`ImageLoadError`] messages, bounded URLs
and JPEG decoding at the image processor's size. For models of another type it is transformers' pipeline unchanged.

How `pipeline("image-classification", model=...)` gets it:

* with sadcl-hf imported, `sadcl_hf.serving.pipeline.register_pipeline` makes it the task's pipeline class;
* without sadcl-hf (`trust_remote_code=True`), through the checkpoint's `config.custom_pipelines`: a SADCL model's
  `save_pretrained` writes that entry and this file and `images.py` beside the weights ([`save_pipeline_code`]).
  That is why this file sits beside `images.py` and imports nothing else from sadcl-hf.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import ImageClassificationPipeline
from transformers.dynamic_module_utils import custom_object_save

from .images import (
    DEFAULT_MAX_URL_BYTES,
    DEFAULT_URL_TIMEOUT,
    ImageLoadError,
    fetch_url,
    load_image,
    processor_draft_size,
)

__all__ = ["CUSTOM_PIPELINES", "SADCLImageClassificationPipeline", "load_pipeline_image", "save_pipeline_code"]

CUSTOM_PIPELINES = {
    "image-classification": {
        "impl": "pipeline_image_classification.SADCLImageClassificationPipeline",
        "pt": ["AutoModelForImageClassification"],
        "type": "image",
    }
}
"""The `config.custom_pipelines` entry a saved SADCL model carries (read by `pipeline()` with remote code)."""


def load_pipeline_image(
    image: Any,
    timeout: float | None = DEFAULT_URL_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_URL_BYTES,
    draft_size: tuple[int, int] | None = None,
) -> PIL.Image.Image:
    """An upright 8-bit RGB image from a URL, a path, encoded bytes, a PIL image, a `{"path", "bytes"}` dict or a
    uint8 array, through [`load_image`] (grayscale/RGBA/CMYK/EXIF, decompression-bomb guard).

    Args:
        timeout, max_bytes: bounds of a URL download ([`fetch_url`]).
        draft_size: upright `(width, height)` the image processor resizes to ([`processor_draft_size`]); JPEGs are
            then decoded at the smallest DCT scale not below it. `None` decodes at full size.

    Raises:
        ImageLoadError: the image cannot be fetched, read or decoded; the message names it and says why.
    """
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        data = fetch_url(image, timeout=timeout, max_bytes=max_bytes)
        try:
            return load_image(data, draft_size=draft_size)
        except ImageLoadError as error:
            raise ImageLoadError(image, error.reason) from error
    return load_image(image, draft_size=draft_size)


class SADCLImageClassificationPipeline(ImageClassificationPipeline):
    """transformers' `ImageClassificationPipeline` whose inputs of a SADCL model go through
    [`load_pipeline_image`] at the image processor's size (the multi-label pipeline's image path).

    Extra call or constructor arguments:
        timeout (`float`, *optional*): seconds an image URL may take (default 10).
        max_bytes (`int`, *optional*): largest image download in bytes (default 50 MiB).
    """

    def _sanitize_parameters(self, top_k=None, function_to_apply=None, timeout=None, max_bytes=None):
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(
            top_k=top_k, function_to_apply=function_to_apply, timeout=timeout
        )
        if max_bytes is not None:
            preprocess_params["max_bytes"] = max_bytes
        return preprocess_params, forward_params, postprocess_params

    def loads_images_with_the_package(self) -> bool:
        """Whether inputs go through [`load_pipeline_image`]: for SADCL models (transformers' loading otherwise)."""
        return getattr(self.model.config, "model_type", None) == "sadcl"

    def load_image(self, image: Any, timeout: float | None = None, max_bytes: int | None = None) -> PIL.Image.Image:
        """`image` as this pipeline's preprocessing opens it: [`load_pipeline_image`] at the image processor's
        draft size, with the call's (else the constructor's, else the default) URL bounds."""
        defaults = self._preprocess_params
        timeout = timeout if timeout is not None else defaults.get("timeout", DEFAULT_URL_TIMEOUT)
        max_bytes = max_bytes if max_bytes is not None else defaults.get("max_bytes", DEFAULT_MAX_URL_BYTES)
        return load_pipeline_image(
            image, timeout=timeout, max_bytes=max_bytes, draft_size=processor_draft_size(self.image_processor)
        )

    def preprocess(self, image, timeout=None, max_bytes=None):
        if not self.loads_images_with_the_package():
            return super().preprocess(image, timeout=timeout)
        if not isinstance(image, torch.Tensor) and not (isinstance(image, np.ndarray) and image.dtype != np.uint8):
            image = self.load_image(image, timeout=timeout, max_bytes=max_bytes)
        return self.image_processor(images=image, return_tensors="pt").to(self.dtype)


def save_pipeline_code(config: Any, save_directory: str | os.PathLike) -> None:
    """Adds [`CUSTOM_PIPELINES`] to `config` and writes this file and `images.py` into `save_directory`, so that
    `pipeline("image-classification", model=save_directory, trust_remote_code=True)` uses
    [`SADCLImageClassificationPipeline`] where sadcl-hf is not installed."""
    config.custom_pipelines = {**(getattr(config, "custom_pipelines", None) or {}), **CUSTOM_PIPELINES}
    os.makedirs(save_directory, exist_ok=True)
    custom_object_save(SADCLImageClassificationPipeline, save_directory)
