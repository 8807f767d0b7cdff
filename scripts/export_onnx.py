#!/usr/bin/env python
"""Export a SADCL model folder to ONNX (checked against PyTorch with onnxruntime), optionally with static int8.

    python scripts/export_onnx.py MODEL_DIR [OUTPUT.onnx] [--opset 17] [--image-size S] [--no-verify]
    python scripts/export_onnx.py MODEL_DIR --quantize int8 --calibration-dataset digits-mosaic \
        --calibration-split validation [--calibration-samples 256] [--eval-split test]

OUTPUT defaults to MODEL_DIR/onnx/model.onnx, beside the weights, so a pushed model carries it and
`pipeline("multi-label-image-classification", model=MODEL_DIR, backend="onnx")` serves it. The graph maps
`pixel_values` [batch, 3, S, S] (preprocessed as the folder's image processor does) to `logits` [batch, K]; label
names, thresholds and normalisation are in the ONNX metadata.

`--quantize int8` also writes MODEL_DIR/onnx/model_quantized.onnx (`backend="onnx-int8"`): onnxruntime's static
quantization in QDQ format (int8 weights per channel, uint8 activations; every Conv, MatMul, Gemm, Add ...), with
activation ranges calibrated on images of `--calibration-split`; then it prints the mAP of the float and int8
graphs on `--eval-split` and records the change in the model card (MODEL_DIR/README.md and model_card_data.json).
Needs the `[onnx]` extra.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoModelForImageClassification

from sadcl_hf.cli import run_script
from sadcl_hf.data import dataset_label_names, load_multilabel_dataset
from sadcl_hf.evaluation import check_dataset_labels, resolve_thresholds
from sadcl_hf.image_processing import evaluation_dataloader
from sadcl_hf.model_card import CARD_DATA_NAME, add_onnx_results_to_model_card
from sadcl_hf.serving.onnx_export import (
    ONNX_FILE_NAME,
    ONNX_INT8_FILE_NAME,
    compare_onnx_models,
    count_quantized_convolutions,
    export_onnx,
    quantize_onnx_int8,
    verify_onnx,
)


def load_split(config, dataset: str, split: str, root: str | None, options: dict, max_samples: int | None = None):
    """A split of `dataset` whose classes are the model's, at most `max_samples` images of it."""
    data = load_multilabel_dataset(dataset, root=root, split=split, **options)
    check_dataset_labels(dataset_label_names(data), config, what=f"{dataset} ({split})")
    return data if max_samples is None else data.select(range(min(max_samples, len(data))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a saved model folder or Hub repository id")
    parser.add_argument("output", nargs="?", default=None, help=f"the .onnx file (default: MODEL_DIR/{ONNX_FILE_NAME})")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: config.image_size)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--quantize", choices=("int8",), default=None, help="also write a static int8 graph")
    parser.add_argument("--calibration-dataset", default=None, help="dataset name (sadcl_hf.data.DATASET_NAMES)")
    parser.add_argument("--calibration-root", default=None, help="the calibration dataset's folder")
    parser.add_argument("--calibration-split", default="validation", help="split whose images calibrate int8")
    parser.add_argument("--calibration-samples", type=int, default=256, help="images used for calibration")
    parser.add_argument("--eval-split", default="test", help="split on which the int8 mAP change is measured")
    parser.add_argument("--dataset-options", default=None, help="extra loader options, a JSON object")
    args = parser.parse_args(argv)
    if args.quantize and args.calibration_dataset is None:
        parser.error("--quantize int8 needs --calibration-dataset (and --calibration-split) for real images")
    if args.calibration_samples < 1:
        parser.error("--calibration-samples must be >= 1")
    model_dir = Path(args.model_dir)
    if args.output is None and not model_dir.is_dir():
        parser.error(f"{args.model_dir} is not a local folder: give OUTPUT.onnx")
    output = Path(args.output) if args.output else model_dir / ONNX_FILE_NAME

    model = AutoModelForImageClassification.from_pretrained(args.model_dir).eval()
    path = export_onnx(model, output, image_size=args.image_size, opset=args.opset)
    message = f"exported {args.model_dir} -> {path} ({path.stat().st_size / 1e6:.1f} MB, opset {args.opset})"
    if not args.no_verify:
        difference = verify_onnx(model, path)
        message += f"; onnxruntime matches PyTorch (max |logit difference| {difference:.2e})"
    print(message)
    if not args.quantize:
        return 0

    int8_path = path.with_name(Path(ONNX_INT8_FILE_NAME).name) if args.output else model_dir / ONNX_INT8_FILE_NAME
    config, options = model.config, json.loads(args.dataset_options) if args.dataset_options else {}
    dataset, root = args.calibration_dataset, args.calibration_root
    calibration = load_split(config, dataset, args.calibration_split, root, options, args.calibration_samples)
    calibration_batches = evaluation_dataloader(config, calibration)
    quantize_onnx_int8(path, int8_path, (batch["pixel_values"] for batch in calibration_batches))
    evaluation = load_split(config, dataset, args.eval_split, root, options)
    result = compare_onnx_models(
        path, int8_path, list(evaluation_dataloader(config, evaluation, 64)), resolve_thresholds(None, config)
    )
    result["quantized_convolutions"], result["convolutions"] = count_quantized_convolutions(int8_path)
    print(
        f"int8 (static, QDQ, calibrated on {len(calibration)} {args.calibration_split} images) -> "
        f"{int8_path} ({int8_path.stat().st_size / 1e6:.1f} MB; {result['quantized_convolutions']}/"
        f"{result['convolutions']} Convs quantized)"
    )
    print(
        f"{args.calibration_dataset} {args.eval_split} mAP: float32 {result['reference_map']:.2f}, "
        f"int8 {result['candidate_map']:.2f} (change {result['map_change']:+.2f} points); "
        f"tag agreement {100 * result['tag_agreement']:.2f}%, max |probability difference| "
        f"{result['max_probability_difference']:.3f}"
    )
    if model_dir.is_dir():
        readme = add_onnx_results_to_model_card(
            model, model_dir, dataset=args.calibration_dataset, calibration_split=args.calibration_split,
            eval_split=args.eval_split, fp32_map=result["reference_map"], int8_map=result["candidate_map"],
        )  # fmt: skip
        print(f"recorded the int8 mAP change in {readme} and {model_dir / CARD_DATA_NAME}")
    return 0


if __name__ == "__main__":
    run_script(main)
