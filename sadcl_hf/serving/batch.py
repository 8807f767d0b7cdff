"""Tagging many images: [`predict_images`] (behind `scripts/predict.py`) and the files it reads and writes.

from sadcl_hf.serving.batch import predict_images
from sadcl_hf.serving.pipeline import load_pipeline

tagger = load_pipeline("runs/demo/model")
for record in predict_images(tagger, ["photo.jpg", "photos/"], attention_maps_dir="maps"):
    print(record)  # {"image": ..., "labels": [...], "scores": {label: score}, "attention_map": ...}
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ..data import ImageProcessorTransform
from ..data.images import DEFAULT_MAX_URL_BYTES, DEFAULT_URL_TIMEOUT, ImageLoadError, processor_draft_size
from ..evaluation import sigmoid
from .attention_maps import logits_and_attention_maps, save_attention_grid
from .onnx_runtime import SADCLOnnxModel
from .pipeline import MultiLabelImageClassificationPipeline, load_pipeline_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "PredictionWriter",
    "TaggingInputs",
    "expand_inputs",
    "predict_images",
    "write_caption",
]

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


class TaggingInputs(torch.utils.data.Dataset):
    """The images to tag, loaded as the pipeline loads them ([`load_pipeline_image`]: bounded URL downloads, JPEGs
    decoded at the processor's `draft_size`) and preprocessed by the model's image processor
    ([`ImageProcessorTransform`], as [`eval_collator_for_config`] does), in DataLoader workers.

    Item `i`: `{"index": i, "pixel_values": [3, H, W]}` (plus `"image"`, the loaded image, with `keep_images`), or
    `{"index": i, "error": message}` when the image cannot be fetched, read or decoded.
    """

    def __init__(
        self,
        images: Sequence[Any],
        image_processor: Any,
        keep_images: bool = False,
        timeout: float | None = DEFAULT_URL_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_URL_BYTES,
    ):
        self.images = images
        self.transform = ImageProcessorTransform(image_processor)
        self.draft_size = processor_draft_size(image_processor)
        self.keep_images = keep_images
        self.timeout = timeout
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image = load_pipeline_image(
                self.images[index], timeout=self.timeout, max_bytes=self.max_bytes, draft_size=self.draft_size
            )
        except ImageLoadError as error:
            return {"index": index, "error": str(error)}
        item = {"index": index, "pixel_values": self.transform(image)}
        if self.keep_images:
            item["image"] = image
        return item


def predict_images(
    tagger: MultiLabelImageClassificationPipeline,
    images: Sequence[Any],
    threshold: float | Sequence[float] | None = None,
    batch_size: int = 8,
    attention_maps_dir: str | os.PathLike | None = None,
    attention_top_k: int = 4,
    names: Sequence[str] | None = None,
    num_workers: int = 0,
    top_k: int | None = None,
    exclude_labels: Collection[str] = (),
    timeout: float | None = DEFAULT_URL_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_URL_BYTES,
) -> Iterator[dict[str, Any]]:
    """Tags `images` (paths, URLs, PIL images, ...) batch by batch, one model forward per batch; yields one record
    per image, in order, as soon as its batch is scored.

    `num_workers` DataLoader worker processes load and preprocess the next batches ([`TaggingInputs`]) while the
    model (PyTorch or ONNX Runtime) scores the current one; 0 does it all in this process. `timeout` (seconds) and
    `max_bytes` bound each URL download; a URL that exceeds them is an error record.

    A record is `{"image", "labels", "scores"}`: `labels` the pipeline's tags (its `postprocess`: the labels whose
    score reaches its threshold, highest first; `threshold` as the pipeline takes it: one value, one per class, or
    `None` for the model's calibrated thresholds) without `exclude_labels`, at most `top_k` of them, and `scores`
    every label's sigmoid score.
    With `attention_maps_dir`, the same forward also returns the decoder's cross-attention and the record names the
    figure written there (`attention_map`; file name from `names`, else `<index>_<stem>`). An unreadable image gives
    `{"image", "error"}` and the run goes on.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if attention_maps_dir is not None and isinstance(tagger.model, SADCLOnnxModel):
        raise ValueError("attention maps need the PyTorch backend (the ONNX graph returns only the logits)")
    if names is not None and len(names) != len(images):
        raise ValueError(f"got {len(names)} names for {len(images)} images")
    label_names = tagger.model.config.label_names
    unknown = sorted(set(exclude_labels) - set(label_names))
    if unknown:
        raise ValueError(f"labels to exclude {unknown} are not labels of the model (labels: {label_names})")
    thresholds = tagger.decision_thresholds(threshold)
    keep_images = attention_maps_dir is not None
    dataset = TaggingInputs(images, tagger.image_processor, keep_images, timeout=timeout, max_bytes=max_bytes)
    # collate_fn=list: a batch is its items as they are; the readable ones' pixel values are stacked below
    batches = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    for items in batches:
        records = []
        for item in items:
            source = images[item["index"]]
            records.append({"image": str(source) if isinstance(source, (str, os.PathLike)) else "input"})
            if "error" in item:
                records[-1]["error"] = item["error"]
        readable = [(position, item) for position, item in enumerate(items) if "error" not in item]
        if not readable:
            yield from records
            continue
        pixel_values = torch.stack([item["pixel_values"] for _, item in readable])
        maps = None
        if attention_maps_dir is None:
            with torch.inference_mode():
                logits = tagger.model(pixel_values=pixel_values.to(tagger.device, tagger.dtype)).logits
        else:
            logits, maps = logits_and_attention_maps(tagger.model, pixel_values)
        logits = logits.float().cpu()
        scores = sigmoid(logits.numpy().astype(np.float64))
        for row, (position, item) in enumerate(readable):
            tags = tagger.postprocess({"logits": logits[row : row + 1]}, threshold=thresholds)
            labels = [tag["label"] for tag in tags if tag["label"] not in exclude_labels]
            records[position]["labels"] = labels[:top_k]
            records[position]["scores"] = {name: round(float(s), 6) for name, s in zip(label_names, scores[row])}
            if maps is not None:
                index = item["index"]
                source = images[index]
                stem = Path(str(source)).stem if isinstance(source, (str, os.PathLike)) else "image"
                name = names[index] if names is not None else f"{index:05d}_{stem}"
                path = Path(attention_maps_dir) / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                probabilities = torch.from_numpy(scores[row]).float()
                save_attention_grid(path, item["image"], source, probabilities, maps[row], label_names, attention_top_k)
                records[position]["attention_map"] = str(path)
        yield from records


class PredictionWriter:
    """Writes [`predict_images`] records as JSON lines or CSV rows (`image, labels, error, <a score column per
    label>`) to an open text file, flushed record by record so that a killed run keeps every record written."""

    def __init__(self, handle: IO[str], output_format: str, label_names: Sequence[str]):
        if output_format not in ("jsonl", "csv"):
            raise ValueError(f"output_format must be 'jsonl' or 'csv', got {output_format!r}")
        self.handle = handle
        self.csv = None
        if output_format == "csv":
            self.csv = csv.DictWriter(handle, fieldnames=["image", "labels", "error", *label_names])
            self.csv.writeheader()
            self.handle.flush()

    def write(self, record: dict[str, Any]) -> None:
        if self.csv is None:
            self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            labels = "|".join(record.get("labels", []))
            row = {"image": record["image"], "labels": labels, "error": record.get("error", "")}
            row.update({name: f"{score:.6f}" for name, score in record.get("scores", {}).items()})
            self.csv.writerow(row)
        self.handle.flush()


def write_caption(record: dict[str, Any], overwrite: bool = False) -> Path | None:
    """Writes a tagged local image's caption file `<image>.txt` beside it (for captioning datasets): its `labels`
    joined by ", ", highest score first. Returns the file, or `None` when it exists and `overwrite` is off."""
    path = Path(record["image"]).with_suffix(".txt")
    if path.exists() and not overwrite:
        return None
    path.write_text(", ".join(record["labels"]), encoding="utf-8")
    return path
