"""Category-related attention maps: where each class query of the Query2Label decoder looks in the image.

For every image, [`save_attention_maps`] writes one PNG: the image, then for each of its `top_k` highest-scoring
labels the decoder's class-to-pixel cross-attention map of that label (averaged over heads), upsampled to the image
and overlaid as a heat map, titled with the label name and its probability — the category-related attention figure
of the SADCL paper. Rendering uses PIL and numpy only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch
import torch.nn.functional as F

from ..data.images import load_image

__all__ = [
    "class_attention_maps",
    "colorize",
    "logits_and_attention_maps",
    "render_attention_grid",
    "save_attention_grid",
    "save_attention_maps",
]

_TITLE_HEIGHT = 22
_GAP = 4
_BACKGROUND = (255, 255, 255)


@torch.no_grad()
def class_attention_maps(model, pixel_values: torch.Tensor, layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs `model` with `output_attentions=True` and turns the decoder's cross-attention into pictures.

    Returns (probabilities [B, K] float32 sigmoid, maps): see [`logits_and_attention_maps`], which this wraps.
    """
    logits, maps = logits_and_attention_maps(model, pixel_values, layer)
    return torch.sigmoid(logits.float()), maps


@torch.no_grad()
def logits_and_attention_maps(model, pixel_values: torch.Tensor, layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward with `output_attentions=True`: the logits and the decoder's cross-attention as pictures.

    Args:
        model: a SADCL classifier (`outputs.attentions` holds one [B, heads, K, h * w] tensor per decoder layer).
        pixel_values: [B, 3, H, W] preprocessed images.
        layer: which decoder layer's cross-attention (Python indexing; -1 = last).

    Returns:
        (logits [B, K], attention maps [B, K, h, w] averaged over heads), on the CPU in float32. Each map sums to 1
        over pixels.
    """
    grid = {}
    hook = model.base_model.input_projection.register_forward_hook(
        lambda module, inputs, feature_map: grid.update(size=feature_map.shape[-2:])
    )
    try:
        outputs = model(pixel_values=pixel_values.to(model.device, dtype=model.dtype), output_attentions=True)
    finally:
        hook.remove()
    attentions = outputs.attentions
    if not attentions:
        raise ValueError(f"{type(model).__name__} returned no attention maps with output_attentions=True")
    if not -len(attentions) <= layer < len(attentions):
        raise ValueError(f"layer={layer} but the model has {len(attentions)} decoder layers")
    weights = attentions[layer].float().mean(dim=1)
    maps = weights.reshape(*weights.shape[:2], *grid["size"])
    return outputs.logits.float().cpu(), maps.cpu()


def colorize(values: np.ndarray) -> np.ndarray:
    """The 'jet' colour map: values [H, W] in [0, 1] -> uint8 RGB [H, W, 3] (blue = low, red = high)."""
    values = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue peak at 3/4, 1/2, 1/4
    rgb = np.clip(1.5 - np.abs(4.0 * values - centres), 0.0, 1.0)
    return np.round(rgb * 255.0).astype(np.uint8)


def _font(size: int):
    try:
        return PIL.ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return PIL.ImageFont.load_default()


def _fit_text(draw: PIL.ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_attention_grid(
    image: PIL.Image.Image,
    maps: np.ndarray | torch.Tensor,
    titles: Sequence[str],
    image_title: str = "",
    tile_size: int = 256,
    alpha: float = 0.5,
) -> PIL.Image.Image:
    """One row of tiles: `image`, then `image` with each map overlaid as a heat map.

    Args:
        image: RGB image (any size; the model saw it resized to a square, so each map is stretched back to it).
        maps: [k, h, w] attention maps; each is min-max normalised before colouring.
        titles: k titles (e.g. "dog 0.97"), drawn above the overlays.
        image_title: title above the image tile.
        tile_size: longer side of a tile in pixels.
        alpha: opacity of the heat map.

    Returns:
        An RGB image of width (k + 1) * tile_width + k * gap and height tile_height + title bar.
    """
    maps = torch.as_tensor(np.asarray(maps), dtype=torch.float32)
    if maps.ndim != 3 or maps.shape[0] != len(titles):
        raise ValueError(f"expected maps [k, h, w] with k = {len(titles)} titles, got shape {tuple(maps.shape)}")
    scale = tile_size / max(image.size)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    tile = np.asarray(image.convert("RGB").resize((width, height), PIL.Image.Resampling.BILINEAR), dtype=np.float32)

    upsampled = F.interpolate(maps[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0].numpy()
    low = upsampled.min(axis=(1, 2), keepdims=True)
    span = upsampled.max(axis=(1, 2), keepdims=True) - low
    normalised = np.where(span > 0, (upsampled - low) / np.where(span > 0, span, 1.0), 0.0)

    tiles = [tile.astype(np.uint8)]
    for heat in normalised:
        overlay = (1.0 - alpha) * tile + alpha * colorize(heat).astype(np.float32)
        tiles.append(np.round(overlay).astype(np.uint8))

    canvas = PIL.Image.new("RGB", (len(tiles) * width + (len(tiles) - 1) * _GAP, height + _TITLE_HEIGHT), _BACKGROUND)
    draw = PIL.ImageDraw.Draw(canvas)
    font = _font(14)
    for index, (pixels, title) in enumerate(zip(tiles, [image_title, *titles])):
        left = index * (width + _GAP)
        canvas.paste(PIL.Image.fromarray(pixels), (left, _TITLE_HEIGHT))
        draw.text((left + 2, 3), _fit_text(draw, title, font, width - 4), fill=(0, 0, 0), font=font)
    return canvas


def save_attention_grid(
    path: str | os.PathLike,
    image: PIL.Image.Image,
    source: Any,
    probabilities: torch.Tensor,
    maps: torch.Tensor,
    label_names: Sequence[str],
    top_k: int = 4,
    tile_size: int = 256,
) -> Path:
    """Writes one image's figure: its `top_k` most probable labels' maps (`probabilities` [K], `maps` [K, h, w])."""
    ranked = torch.argsort(probabilities, descending=True, stable=True)[:top_k].tolist()
    titles = [f"{label_names[k]} {probabilities[k].item():.2f}" for k in ranked]
    image_title = Path(source).name if isinstance(source, (str, os.PathLike)) else "input"
    render_attention_grid(image, maps[ranked], titles, image_title, tile_size).save(path)
    return Path(path)


def _default_name(source: Any, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).stem
    return f"image_{index:05d}"


def save_attention_maps(
    model,
    image_processor,
    images: Sequence[Any],
    output_dir: str | os.PathLike,
    top_k: int = 4,
    layer: int = -1,
    names: Sequence[str] | None = None,
    batch_size: int = 8,
    tile_size: int = 256,
) -> list[Path]:
    """Writes `output_dir/<name>.png` per image: the image and its `top_k` labels' cross-attention maps.

    Args:
        model: a SADCL model (its device and dtype are used).
        image_processor: the model's image processor (e.g. `AutoImageProcessor.from_pretrained(model_dir)`).
        images: paths, PIL images, encoded bytes, ... (anything [`load_image`] reads).
        output_dir: created if missing.
        top_k: number of labels shown, the highest probabilities first.
        layer: decoder layer whose cross-attention is shown (-1 = last).
        names: file names without extension, one per image (default: the file's stem, else `image_<index>`).
        batch_size: images per forward pass.
        tile_size: longer side of each tile in pixels.

    Returns:
        The written PNG paths, in input order.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if names is not None and len(names) != len(images):
        raise ValueError(f"got {len(names)} names for {len(images)} images")
    label_names = model.config.label_names
    top_k = min(top_k, len(label_names))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    written = []
    try:
        for start in range(0, len(images), batch_size):
            sources = images[start : start + batch_size]
            loaded = [load_image(source) for source in sources]
            pixel_values = image_processor(images=loaded, return_tensors="pt")["pixel_values"]
            probabilities, maps = class_attention_maps(model, pixel_values, layer=layer)
            for offset, (source, image) in enumerate(zip(sources, loaded)):
                index = start + offset
                name = names[index] if names is not None else _default_name(source, index)
                path = output_dir / f"{name}.png"
                save_attention_grid(
                    path, image, source, probabilities[offset], maps[offset], label_names, top_k, tile_size
                )
                written.append(path)
    finally:
        model.train(was_training)
    return written
