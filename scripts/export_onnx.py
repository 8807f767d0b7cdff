#!/usr/bin/env python
"""Export a SADCL model folder to ONNX and check it against PyTorch with onnxruntime.

    python scripts/export_onnx.py MODEL_DIR OUTPUT.onnx [--opset 17] [--image-size S] [--no-verify]

The graph maps `pixel_values` [batch, 3, S, S] (preprocessed as the folder's image processor does) to `logits`
[batch, K]; apply a sigmoid for probabilities. Label names, thresholds and normalisation are in the ONNX metadata.
Needs the `[onnx]` extra (onnx, onnxruntime).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers import AutoModelForImageClassification

from sadcl_hf.onnx_export import export_onnx, verify_onnx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a saved model folder or Hub repository id")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: config.image_size)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    args = parser.parse_args(argv)

    model = AutoModelForImageClassification.from_pretrained(args.model_dir).eval()
    path = export_onnx(model, args.output, image_size=args.image_size, opset=args.opset)
    message = f"exported {args.model_dir} -> {path} ({Path(path).stat().st_size / 1e6:.1f} MB, opset {args.opset})"
    if not args.no_verify:
        difference = verify_onnx(model, path)
        message += f"; onnxruntime matches PyTorch (max |logit difference| {difference:.2e})"
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
