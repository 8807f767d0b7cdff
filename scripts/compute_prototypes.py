#!/usr/bin/env python
"""Compute class prototypes from a trained (stage-1) SADCL model: the paper's second-stage initialisation.

    python scripts/compute_prototypes.py --model runs/coco-stage1/model --config configs/coco2014-r101-448.yaml \
        --output prototypes.safetensors [--threshold 0.85] [--batch-size 64]

A prototype is the mean label-level feature over the training images where the class is present and predicted
with probability > threshold (classes never seen: see `sadcl_hf.training.prototypes.compute_prototypes`). The dataset is
given by `--config` (its `dataset`, `dataset_root`, `train_split`, `dataset_options`) or `--dataset`/`--dataset-root`.
"""

import argparse
from pathlib import Path

from sadcl_hf import SADCLForImageClassification
from sadcl_hf.cli import run_script
from sadcl_hf.data import dataset_label_names
from sadcl_hf.evaluation import check_dataset_labels
from sadcl_hf.training.arguments import DataArguments
from sadcl_hf.training.prototypes import compute_dataset_prototypes, save_prototypes
from sadcl_hf.training.recipe import default_splits, load_split, read_config_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="stage-1 model folder or Hub id")
    parser.add_argument("--output", required=True, help="prototypes file (.safetensors or .npy)")
    parser.add_argument("--config", default=None, help="training config naming the dataset")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--dataset-root", default=None)
    parser.add_argument("--split", default=None, help="default: the benchmark's training split")
    parser.add_argument("--threshold", type=float, default=None, help="default: the model's prototype_threshold")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args()

    settings = read_config_file(Path(args.config)) if args.config else {}
    names = ("dataset", "dataset_root", "train_split", "dataset_options")
    data_fields = {name: settings[name] for name in names if settings.get(name) is not None}
    data_fields.update({k: v for k, v in (("dataset", args.dataset), ("dataset_root", args.dataset_root)) if v})
    if "dataset" not in data_fields:
        parser.error("name the dataset with --config or --dataset")
    data_args = DataArguments(**data_fields)
    split = args.split or data_args.train_split or default_splits(data_args.dataset)[0]
    dataset = load_split(data_args, split)

    model = SADCLForImageClassification.from_pretrained(args.model)
    check_dataset_labels(dataset_label_names(dataset), model.config, what=f"{data_args.dataset} ({split})")
    prototypes, counts = compute_dataset_prototypes(
        model, dataset, threshold=args.threshold, batch_size=args.batch_size, num_workers=args.num_workers
    )
    save_prototypes(prototypes, args.output)
    print(f"saved {tuple(prototypes.shape)} prototypes to {args.output}; images per class: {counts.tolist()}")


if __name__ == "__main__":
    run_script(main)
