#!/usr/bin/env python
"""Tag images with a SADCL model: one JSON line (or CSV row) per image.

    python scripts/predict.py --model DIR_OR_REPO IMAGES_OR_FOLDERS... [--output preds.jsonl]
        [--threshold T | --thresholds FILE.json] [--batch-size N] [--device cpu] [--format jsonl|csv]
        [--attention-maps OUT_DIR] [--attention-top-k 4] [--backend pytorch|onnx|onnx-int8] [--num-workers N]
        [--url-timeout SECONDS] [--max-url-bytes BYTES] [--captions [--overwrite]] [--top-k K] [--exclude-tags a,b]

Folders are searched recursively for image files (.jpg .jpeg .png .bmp .gif .tif .tiff .webp .ppm .pgm);
http(s) URLs are downloaded (at most --max-url-bytes, giving up after --url-timeout seconds). Each JSON line is
`{"image": path, "labels": [...], "scores": {label: score}}`: `labels` holds the labels whose probability reaches
its threshold (highest first) and `scores` every label's probability. Thresholds: --threshold (one for all
classes), else --thresholds (a JSON list, or {label: threshold}), else the per-class thresholds calibrated into the
model config, else 0.5. `--exclude-tags` drops labels from `labels` and `--top-k` keeps the K highest of the rest.

`--num-workers N` loads and preprocesses images in N worker processes while the model scores the previous batch
(use it on folders of large photos). Records are written, and flushed, as each batch is scored, in input order:
a run that is stopped or crashes keeps every record written before.

`--captions` also writes each local image's `labels` into `<image>.txt` beside it, joined by ", " (highest score
first), for captioning datasets; an existing caption file is kept unless `--overwrite`.

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
from sadcl_hf.cli import run_script
from sadcl_hf.serving.backends import BACKENDS
from sadcl_hf.serving.batch import PredictionWriter, expand_inputs, predict_images, write_caption
from sadcl_hf.serving.pipeline import DEFAULT_MAX_URL_BYTES, DEFAULT_URL_TIMEOUT, load_pipeline


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
        "--backend", choices=list(BACKENDS), default="pytorch",
        help="pytorch, or ONNX Runtime on the CPU with the model's onnx/model.onnx (onnx-int8: model_quantized.onnx)",
    )  # fmt: skip
    parser.add_argument(
        "--num-workers", type=int, default=0,
        help="worker processes that load and preprocess images while the model runs (default 0: in this process)",
    )  # fmt: skip
    parser.add_argument(
        "--url-timeout", type=float, default=DEFAULT_URL_TIMEOUT,
        help=f"seconds an image URL may take to download (default {DEFAULT_URL_TIMEOUT:g})",
    )  # fmt: skip
    parser.add_argument(
        "--max-url-bytes", type=int, default=DEFAULT_MAX_URL_BYTES,
        help=f"largest image download in bytes (default {DEFAULT_MAX_URL_BYTES}: 50 MiB)",
    )  # fmt: skip
    parser.add_argument("--captions", action="store_true", help="write each image's labels to <image>.txt beside it")
    parser.add_argument("--overwrite", action="store_true", help="with --captions: replace existing caption files")
    parser.add_argument("--top-k", type=int, default=None, help="keep at most K labels per image (highest first)")
    parser.add_argument(
        "--exclude-tags", default="", metavar="A,B", help="comma-separated labels never written (e.g. rating tags)"
    )
    args = parser.parse_args(argv)
    if args.backend != "pytorch":
        if args.attention_maps:
            parser.error("--attention-maps needs --backend pytorch (the ONNX graph returns only the logits)")
        if args.device not in (None, "cpu"):
            parser.error(f"--backend {args.backend} runs on the CPU; drop --device {args.device}")
    for flag, value, least in (
        ("--batch-size", args.batch_size, 1), ("--num-workers", args.num_workers, 0), ("--top-k", args.top_k, 1),
        ("--url-timeout", args.url_timeout, 0), ("--max-url-bytes", args.max_url_bytes, 1),
    ):  # fmt: skip
        if value is not None and not value >= least:
            parser.error(f"{flag} must be >= {least}, got {value}")
    if args.overwrite and not args.captions:
        parser.error("--overwrite applies to --captions' files; add --captions")
    exclude_tags = [tag.strip() for tag in args.exclude_tags.split(",") if tag.strip()]
    output_format = args.format or ("csv" if args.output.lower().endswith(".csv") else "jsonl")
    device = args.device or ("cuda" if torch.cuda.is_available() and args.backend == "pytorch" else "cpu")

    paths = expand_inputs(args.inputs)
    if not paths:
        parser.error(f"no image files found in {args.inputs}")
    try:
        tagger = load_pipeline(args.model, device, args.revision, args.backend)
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
    unknown = [tag for tag in exclude_tags if tag not in label_names]
    if unknown:
        parser.error(f"--exclude-tags: {unknown} are not labels of the model {args.model} (labels: {label_names})")

    num_read, captions_kept, captions_written = 0, 0, set()
    records = predict_images(
        tagger, paths, threshold=threshold, batch_size=args.batch_size,
        attention_maps_dir=args.attention_maps, attention_top_k=args.attention_top_k, num_workers=args.num_workers,
        top_k=args.top_k, exclude_labels=exclude_tags, timeout=args.url_timeout, max_bytes=args.max_url_bytes,
    )  # fmt: skip
    with open_output(args.output) as handle:
        writer = PredictionWriter(handle, output_format, label_names)
        for record in tqdm(records, total=len(paths), unit="image", desc="Tagging"):
            if "error" in record:
                print(f"warning: {record['error']}", file=sys.stderr)
            else:
                num_read += 1
            if args.captions and "error" not in record:
                caption = Path(record["image"]).with_suffix(".txt")
                if record["image"].startswith(("http://", "https://")):
                    print(f"warning: no caption file for the URL {record['image']}", file=sys.stderr)
                elif caption in captions_written:  # a.jpg and a.png share a.txt: the first image keeps it
                    print(f"warning: {caption} already holds another image's caption; none for {record['image']}",
                          file=sys.stderr)  # fmt: skip
                elif write_caption(record, overwrite=args.overwrite) is None:
                    captions_kept += 1
                else:
                    captions_written.add(caption)
            writer.write(record)
    print(f"tagged {num_read} of {len(paths)} images -> {args.output}", file=sys.stderr)
    if captions_kept:
        print(f"kept {captions_kept} existing caption file(s); --overwrite replaces them", file=sys.stderr)
    return 0 if num_read > 0 else 1


if __name__ == "__main__":
    run_script(main)
