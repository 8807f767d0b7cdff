#!/usr/bin/env python
"""Convert an official Query2Label or SADCL checkpoint into a folder `AutoModelForImageClassification` loads.

    python scripts/convert_official_checkpoint.py CHECKPOINT OUTPUT_DIR [--dataset coco2014|voc2007|nuswide|vg500]
        [--id2label FILE] [--image-size N] [--num-heads N] [--backbone-num-heads 3,12,16] [--orid-norm]
        [--push-to-hub ORG/NAME]

CHECKPOINT: a released Query2Label `checkpoint.pkl` ({"epoch", "arch", "state_dict", "best_mAP", "optimizer"}), an
official SADCL `.pth.tar` ({"state_dict", ...}), with or without DataParallel's `module.` prefix, or `.safetensors`.
Pickles are read with torch.load(weights_only=True) and an allow-list of numpy scalars only: nothing in the file can
run code, and the optimizer state is never read. The backbone (ResNet, TResNet, TResNet-V2, Swin, CvT) and every size
are inferred from the tensors; the transformer's heads are not stored (--num-heads, 4 in every release), nor are
CvT's per-stage heads (--backbone-num-heads, default those of the published CvT of that width).
--dataset: the benchmark (named on the model card) and its class names in the released order (COCO's 80 in
category-id order, VOC's 20, NUS-WIDE's 81); --id2label: names from a file instead (VG-500: `--dataset vg500
--id2label vg_category_500.json`): JSON list, JSON {index: name} or {name: index}, or one name per line.
--orid-norm: the run was trained without input normalisation (Query2Label's `orid_norm`); default ImageNet mean/std.
--push-to-hub: then push the folder with scripts/push_to_hub.py (log in first or set HF_TOKEN).
"""

import argparse

from sadcl_hf.cli import run_script
from sadcl_hf.hub.conversion import convert_official_checkpoint
from sadcl_hf.hub.push import push_model_folder


def _heads(text: str) -> list[int]:
    try:
        return [int(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (e.g. 3,12,16), got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("output_dir")
    parser.add_argument("--dataset", default=None, help="coco2014, voc2007, nuswide (canonical names) or vg500")
    parser.add_argument("--id2label", default=None, help="label names file (JSON list/object or one name per line)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the training size of the checkpoint")
    parser.add_argument("--num-heads", type=int, default=4, help="transformer attention heads (not stored; 4)")
    parser.add_argument("--backbone-num-heads", type=_heads, default=None, help="CvT per-stage heads, e.g. 3,12,16")
    parser.add_argument("--orid-norm", action="store_true", help="no input normalisation (mean 0, std 1)")
    parser.add_argument("--push-to-hub", default=None, metavar="ORG/NAME", help="push the converted folder there")
    args = parser.parse_args(argv)
    model = convert_official_checkpoint(
        args.checkpoint,
        args.output_dir,
        num_attention_heads=args.num_heads,
        id2label_file=args.id2label,
        dataset=args.dataset,
        image_size=args.image_size,
        backbone_num_heads=args.backbone_num_heads,
        orid_norm=args.orid_norm,
    )
    config = model.config
    print(
        f"converted {args.checkpoint} -> {args.output_dir}: backbone {config.backbone} "
        f"({'timm' if config.use_timm_backbone else 'transformers'}), {config.num_labels} classes, hidden "
        f"{config.hidden_dim}, {config.num_encoder_layers} encoder / {config.num_decoder_layers} decoder layers, "
        f"image size {config.image_size}"
    )
    if args.push_to_hub:
        repo_id, files, url = push_model_folder(
            args.output_dir, args.push_to_hub, commit_message="Converted official checkpoint"
        )["model"]
        print(f"pushed {len(files)} files ({', '.join(files)}) to {repo_id}: {url}")
    return 0


if __name__ == "__main__":
    run_script(main)
