#!/usr/bin/env python
"""Tag images with a SADCL model: one JSON line (or CSV row) per image.

    python scripts/predict.py --model DIR_OR_REPO IMAGES_OR_FOLDERS... [--output preds.jsonl]
        [--threshold T | --thresholds FILE.json] [--batch-size N] [--device cpu] [--format jsonl|csv]
        [--attention-maps OUT_DIR] [--attention-top-k 4] [--backend pytorch|onnx|onnx-int8]

Folders are searched recursively for image files (.jpg .jpeg .png .bmp .gif .tif .tiff .webp .ppm .pgm);
http(s) URLs are downloaded. Each JSON line is `{"image": path, "labels": [...], "scores": {label: score}}`:
`labels` holds the labels whose probability reaches its threshold (highest first) and `scores` every label's
probability. Thresholds: --threshold (one for all classes), else --thresholds (a JSON list, or {label: threshold}),
else the per-class thresholds calibrated into the model config, else 0.5.

`--backend onnx` (or `onnx-int8`) tags with ONNX Runtime on the CPU, from the model's `onnx/model.onnx` (or
`onnx/model_quantized.onnx`) that `scripts/export_onnx.py` writes; the PyTorch weights are not loaded.

An unreadable image (corrupt, truncated, not an image, too large) is reported on stderr and written as
`{"image": path, "error": "..."}`; the run goes on. Exit status: 0, or 1 when no image could be read.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModelForImageClassification

from sadcl_hf import MultiLabelImageClassificationPipeline, load_thresholds
from sadcl_hf.attention_maps import save_attention_maps
from sadcl_hf.data import ImageLoadError
from sadcl_hf.evaluation import predict_labels
from sadcl_hf.onnx_runtime import ONNX_BACKENDS, SADCLOnnxModel
from sadcl_hf.pipeline import load_pipeline_image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def expand_inputs(inputs: list[str]) -> list[str]:
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
    model_name: str, device: str, revision: str | None, backend: str = "pytorch"
) -> MultiLabelImageClassificationPipeline:
    if backend == "pytorch":
        model = AutoModelForImageClassification.from_pretrained(model_name, revision=revision)
    else:
        model = SADCLOnnxModel.from_pretrained(model_name, file_name=ONNX_BACKENDS[backend], revision=revision)
    try:
        image_processor = AutoImageProcessor.from_pretrained(model_name, revision=revision)
    except OSError:
        from sadcl_hf.image_processing import image_processor_for_config

        print(f"warning: {model_name} has no image processor; using the config's preprocessing", file=sys.stderr)
        image_processor = image_processor_for_config(model.config)
    return MultiLabelImageClassificationPipeline(model=model, image_processor=image_processor, device=device)


@contextmanager
def open_output(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdout
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        yield handle


class RecordWriter:
    """Writes prediction records as JSON lines or CSV rows (`image, labels, error, <one score column per label>`)."""

    def __init__(self, handle: IO[str], output_format: str, label_names: list[str]):
        self.handle = handle
        self.label_names = label_names
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub repository id")
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or URLs")
    parser.add_argument("--output", default="-", help="output file (default: standard output)")
    thresholds = parser.add_mutually_exclusive_group()
    thresholds.add_argument("--threshold", type=float, default=None, help="one threshold for every class")
    thresholds.add_argument("--thresholds", default=None, help="JSON file: a list of K thresholds or {label: t}")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: cuda if available)")
    parser.add_argument("--format", choices=("jsonl", "csv"), default=None, help="default: from --output's suffix")
    parser.add_argument("--attention-maps", default=None, metavar="OUT_DIR", help="also save attention-map PNGs")
    parser.add_argument("--attention-top-k", type=int, default=4, help="labels shown per attention-map figure")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    parser.add_argument(
        "--backend", choices=("pytorch", *ONNX_BACKENDS), default="pytorch",
        help="pytorch, or ONNX Runtime on the CPU with the model's onnx/model.onnx (onnx-int8: model_quantized.onnx)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.backend != "pytorch":
        if args.attention_maps:
            parser.error("--attention-maps needs --backend pytorch (the ONNX graph returns only the logits)")
        if args.device not in (None, "cpu"):
            parser.error(f"--backend {args.backend} runs on the CPU; drop --device {args.device}")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    output_format = args.format or ("csv" if args.output.lower().endswith(".csv") else "jsonl")
    device = args.device or ("cuda" if torch.cuda.is_available() and args.backend == "pytorch" else "cpu")

    paths = expand_inputs(args.inputs)
    if not paths:
        parser.error(f"no image files found in {args.inputs}")
    try:
        tagger = load_tagger(args.model, device, args.revision, args.backend)
    except (OSError, ValueError) as error:
        print(f"error: cannot load the model {args.model}: {error}", file=sys.stderr)
        return 2
    label_names = tagger.label_names
    try:
        if args.thresholds is not None:
            threshold = load_thresholds(args.thresholds, len(label_names), label_names)
        else:
            threshold = args.threshold
        decision_thresholds = dict(zip(label_names, tagger.decision_thresholds(threshold).tolist()))
    except (OSError, ValueError) as error:
        parser.error(str(error))

    num_read = 0
    with open_output(args.output) as handle, tqdm(total=len(paths), unit="image", desc="Tagging") as progress:
        writer = RecordWriter(handle, output_format, label_names)
        for start in range(0, len(paths), args.batch_size):
            chunk = paths[start : start + args.batch_size]
            records: list[dict[str, Any]] = []
            images, readable = [], []
            for path in chunk:
                try:
                    images.append(load_pipeline_image(path))
                    readable.append(len(records))
                    records.append({"image": path})
                except ImageLoadError as error:
                    progress.write(f"warning: {error}", file=sys.stderr)
                    records.append({"image": path, "error": str(error)})
            if images:
                predictions = tagger(images, threshold=0.0, batch_size=args.batch_size)
                for position, prediction in zip(readable, predictions):
                    scores = {item["label"]: item["score"] for item in prediction}
                    records[position]["labels"] = [
                        item["label"]
                        for item in prediction
                        if predict_labels(item["score"], decision_thresholds[item["label"]])
                    ]
                    records[position]["scores"] = {name: round(scores[name], 6) for name in label_names}
                if args.attention_maps:
                    names = [f"{start + position:05d}_{Path(records[position]['image']).stem}" for position in readable]
                    written = save_attention_maps(
                        tagger.model, tagger.image_processor, images, args.attention_maps,
                        top_k=args.attention_top_k, names=names, batch_size=args.batch_size,
                    )
                    for position, map_path in zip(readable, written):
                        records[position]["attention_map"] = str(map_path)
            for record in records:
                writer.write(record)
            num_read += len(images)
            progress.update(len(chunk))
    print(f"tagged {num_read} of {len(paths)} images -> {args.output}", file=sys.stderr)
    return 0 if num_read > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
