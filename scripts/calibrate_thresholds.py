#!/usr/bin/env python
"""Calibrate per-class decision thresholds on a validation split and save them into the model folder.

    python scripts/calibrate_thresholds.py --model DIR --dataset NAME [--root DATA_ROOT] [--split validation]
        [--batch-size 32] [--device cpu] [--num-workers 0] [--output-dir DIR] [--report report.json] [--dry-run]

Each class gets the threshold that maximises its F1 on the split; they are written to `config.thresholds` in the
model folder's config.json (or --output-dir), where the `multi-label-image-classification` pipeline and
scripts/predict.py pick them up. Prints CP/CR/CF1/OP/OR/OF1 (and mAP, which thresholds do not change) before and
after; the before/after table goes into the model card (README.md and model_card_data.json of the same folder).
Use a validation split (e.g. `validation` for digits-mosaic, a held-out folder split), not the test split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from sadcl_hf import calibrate_thresholds
from sadcl_hf.analysis.calibration import format_calibration_report
from sadcl_hf.cli import run_script
from sadcl_hf.data import load_multilabel_dataset
from sadcl_hf.model_card import CARD_DATA_NAME, add_calibration_to_model_card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local model folder (its config.json is updated)")
    parser.add_argument("--dataset", required=True, help="dataset name, e.g. coco2014, voc2007, digits-mosaic, folder")
    parser.add_argument("--root", default=None, help="the dataset's folder (not for digits-mosaic)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--output-dir", default=None, help="write config.json here instead of the model folder")
    parser.add_argument("--report", default=None, help="also write the report (metrics, thresholds) as JSON")
    parser.add_argument("--dry-run", action="store_true", help="print the report, save nothing")
    args = parser.parse_args(argv)

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        parser.error(f"{model_dir} is not a model folder (no config.json)")
    model = AutoModelForImageClassification.from_pretrained(model_dir)
    image_processor = None
    if (model_dir / "preprocessor_config.json").is_file():
        image_processor = AutoImageProcessor.from_pretrained(model_dir)
    dataset = load_multilabel_dataset(args.dataset, root=args.root, split=args.split)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    report = calibrate_thresholds(
        model,
        dataset,
        image_processor,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=device,
        show_progress=True,
    )
    print(f"{args.dataset} / {args.split}: {report['num_images']} images")
    print(format_calibration_report(report))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not args.dry_run:
        output_dir = Path(args.output_dir or model_dir)
        model.config.save_pretrained(output_dir)
        print(f"saved {model.config.num_labels} per-class thresholds to {output_dir / 'config.json'}")
        readme = add_calibration_to_model_card(model, output_dir, report, dataset=args.dataset, split=args.split)
        print(f"recorded the calibration in {readme} and {output_dir / CARD_DATA_NAME}")
    return 0


if __name__ == "__main__":
    run_script(main)
