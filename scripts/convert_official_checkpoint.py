#!/usr/bin/env python
"""Convert an official SADCL or Query2Label checkpoint into a folder `AutoModelForImageClassification` loads.

    python scripts/convert_official_checkpoint.py CHECKPOINT OUTPUT_DIR [--num-heads N] [--id2label FILE]

CHECKPOINT: `.pth`/`.pth.tar` (`{"state_dict": ...}`, optional `module.` prefix; read with weights_only=True) or
`.safetensors`. The architecture is inferred from the tensor shapes; the number of heads is not stored (default 4).
--id2label: JSON list, JSON {index: name} or a text file with one name per line (default: LABEL_0, ...).
"""

import argparse

from sadcl_hf.conversion import convert_official_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("output_dir")
    parser.add_argument("--num-heads", type=int, default=4, help="attention heads (not stored in checkpoints)")
    parser.add_argument("--id2label", default=None, help="label names file (JSON list/object or one name per line)")
    args = parser.parse_args()
    model = convert_official_checkpoint(args.checkpoint, args.output_dir, args.num_heads, args.id2label)
    config = model.config
    print(
        f"converted {args.checkpoint} -> {args.output_dir}: backbone {config.backbone}, {config.num_labels} classes, "
        f"hidden {config.hidden_dim}, {config.num_encoder_layers} encoder / {config.num_decoder_layers} decoder "
        "layers, "
        f"image size {config.image_size}"
    )


if __name__ == "__main__":
    main()
