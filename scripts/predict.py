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
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch
from tqdm.auto import tqdm

from sadcl_hf import load_thresholds
from sadcl_hf.inference import PredictionWriter, expand_inputs, load_tagger, predict_images
from sadcl_hf.onnx_runtime import ONNX_BACKENDS


@contextmanager
def open_output(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdout
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        yield handle


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
    label_names = tagger.model.config.label_names
    try:
        threshold = args.threshold
        if args.thresholds is not None:
            threshold = load_thresholds(args.thresholds, len(label_names), label_names)
        tagger.decision_thresholds(threshold)
    except (OSError, ValueError) as error:
        parser.error(str(error))

    num_read = 0
    records = predict_images(
        tagger, paths, threshold=threshold, batch_size=args.batch_size,
        attention_maps_dir=args.attention_maps, attention_top_k=args.attention_top_k,
    )  # fmt: skip
    with open_output(args.output) as handle:
        writer = PredictionWriter(handle, output_format, label_names)
        for record in tqdm(records, total=len(paths), unit="image", desc="Tagging"):
            if "error" in record:
                print(f"warning: {record['error']}", file=sys.stderr)
            else:
                num_read += 1
            writer.write(record)
    print(f"tagged {num_read} of {len(paths)} images -> {args.output}", file=sys.stderr)
    return 0 if num_read > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
