"""Tagging many images: [`predict_images`] (behind `scripts/predict.py`) and the files it reads and writes.

    from sadcl_hf.inference import load_tagger, predict_images

    tagger = load_tagger("runs/demo/model")
    for record in predict_images(tagger, ["photo.jpg", "photos/"], attention_maps_dir="maps"):
        print(record)  # {"image": ..., "labels": [...], "scores": {label: score}, "attention_map": ...}
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from .attention_maps import logits_and_attention_maps, save_attention_grid
from .data.images import ImageLoadError
from .evaluation import sigmoid
from .image_processing import image_processor_for_config
from .onnx_runtime import ONNX_BACKENDS, SADCLOnnxModel
from .pipeline import MultiLabelImageClassificationPipeline, load_pipeline_image

__all__ = ["IMAGE_EXTENSIONS", "PredictionWriter", "expand_inputs", "load_tagger", "predict_images"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Files and URLs as given; folders replaced by their image files (recursive, sorted, hidden ones skipped)."""
    expanded = []
    for item in inputs:
        folder = Path(item)
        if item.startswith(("http://", "https://")) or not folder.is_dir():
            expanded.append(item)
            continue
        for path in sorted(folder.rglob("*")):
            hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not hidden:
                expanded.append(str(path))
    return expanded


def load_tagger(
    model_name: str, device: str | None = None, revision: str | None = None, backend: str = "pytorch"
) -> MultiLabelImageClassificationPipeline:
    """The multi-label pipeline of a model folder or Hub id, with PyTorch or ONNX Runtime (`"onnx"`,
    `"onnx-int8"`: the folder's exported graphs, on the CPU). A folder without an image processor gets the
    config's preprocessing, with a warning."""
    if backend == "pytorch":
        model = AutoModelForImageClassification.from_pretrained(model_name, revision=revision)
    elif backend in ONNX_BACKENDS:
        model = SADCLOnnxModel.from_pretrained(model_name, file_name=ONNX_BACKENDS[backend], revision=revision)
    else:
        raise ValueError(f"backend must be 'pytorch' or one of {sorted(ONNX_BACKENDS)}, got {backend!r}")
    try:
        image_processor = AutoImageProcessor.from_pretrained(model_name, revision=revision)
    except OSError:
        print(f"warning: {model_name} has no image processor; using the config's preprocessing", file=sys.stderr)
        image_processor = image_processor_for_config(model.config)
    return MultiLabelImageClassificationPipeline(model=model, image_processor=image_processor, device=device)


def predict_images(
    tagger: MultiLabelImageClassificationPipeline,
    images: Sequence[Any],
    threshold: float | Sequence[float] | None = None,
    batch_size: int = 8,
    attention_maps_dir: str | os.PathLike | None = None,
    attention_top_k: int = 4,
    names: Sequence[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Tags `images` (paths, URLs, PIL images, ...) batch by batch, one model forward per batch; yields one record
    per image, in order.

    A record is `{"image", "labels", "scores"}`: `labels` the pipeline's tags (its `postprocess`: the labels whose
    score reaches its threshold, highest first; `threshold` as the pipeline takes it: one value, one per class, or
    `None` for the model's calibrated thresholds) and `scores` every label's sigmoid score.
    With `attention_maps_dir`, the same forward also returns the decoder's cross-attention and the record names the
    figure written there (`attention_map`; file name from `names`, else `<index>_<stem>`). An unreadable image gives
    `{"image", "error"}` and the run goes on.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if attention_maps_dir is not None and isinstance(tagger.model, SADCLOnnxModel):
        raise ValueError("attention maps need the PyTorch backend (the ONNX graph returns only the logits)")
    if names is not None and len(names) != len(images):
        raise ValueError(f"got {len(names)} names for {len(images)} images")
    label_names = tagger.model.config.label_names
    thresholds = tagger.decision_thresholds(threshold)
    for start in range(0, len(images), batch_size):
        records: list[dict[str, Any]] = []
        loaded, readable = [], []
        for source in images[start : start + batch_size]:
            record: dict[str, Any] = {"image": str(source) if isinstance(source, (str, os.PathLike)) else "input"}
            try:
                loaded.append(load_pipeline_image(source))
                readable.append((len(records), source))
            except ImageLoadError as error:
                record["error"] = str(error)
            records.append(record)
        if loaded:
            pixel_values = tagger.image_processor(images=loaded, return_tensors="pt")["pixel_values"]
            maps = None
            if attention_maps_dir is None:
                with torch.inference_mode():
                    logits = tagger.model(pixel_values=pixel_values.to(tagger.device, tagger.dtype)).logits
            else:
                logits, maps = logits_and_attention_maps(tagger.model, pixel_values)
            logits = logits.float().cpu()
            scores = sigmoid(logits.numpy().astype(np.float64))
            for row, ((position, source), image) in enumerate(zip(readable, loaded)):
                tags = tagger.postprocess({"logits": logits[row : row + 1]}, threshold=thresholds)
                records[position]["labels"] = [tag["label"] for tag in tags]
                records[position]["scores"] = {name: round(float(s), 6) for name, s in zip(label_names, scores[row])}
                if maps is not None:
                    index = start + position
                    stem = Path(str(source)).stem if isinstance(source, (str, os.PathLike)) else "image"
                    name = names[index] if names is not None else f"{index:05d}_{stem}"
                    path = Path(attention_maps_dir) / f"{name}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    probabilities = torch.from_numpy(scores[row]).float()
                    save_attention_grid(path, image, source, probabilities, maps[row], label_names, attention_top_k)
                    records[position]["attention_map"] = str(path)
        yield from records


class PredictionWriter:
    """Writes [`predict_images`] records as JSON lines or CSV rows (`image, labels, error, <a score column per
    label>`) to an open text file."""

    def __init__(self, handle: IO[str], output_format: str, label_names: Sequence[str]):
        if output_format not in ("jsonl", "csv"):
            raise ValueError(f"output_format must be 'jsonl' or 'csv', got {output_format!r}")
        self.handle = handle
        self.csv = None
        if output_format == "csv":
            self.csv = csv.DictWriter(handle, fieldnames=["image", "labels", "error", *label_names])
            self.csv.writeheader()

    def write(self, record: dict[str, Any]) -> None:
        if self.csv is None:
            self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        row = {"image": record["image"], "labels": "|".join(record.get("labels", [])), "error": record.get("error", "")}
        row.update({name: f"{score:.6f}" for name, score in record.get("scores", {}).items()})
        self.csv.writerow(row)
