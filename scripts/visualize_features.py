#!/usr/bin/env python
"""The SADCL paper's label-feature pictures for any model and split (needs `pip install "sadcl-hf[viz]"`).

    python scripts/visualize_features.py --model runs/demo/baseline/model runs/demo/sadcl/model \
        --dataset digits-mosaic --split test --output-dir runs/features
    python scripts/visualize_features.py --model runs/coco-sadcl/model --dataset coco2014 --dataset-root /data/coco \
        --split val

For each model, one PNG `OUTPUT_DIR/<name>_tsne.png` (same axes style for every model): t-SNE of up to 2,000
label-level features of the classes present in the split's images, coloured by class; the same for the projected
features; the class prototypes in the first embedding (fitted on features and prototypes jointly). Prints, and writes
to `OUTPUT_DIR/separation.json`, the cosine silhouette score and the same-class minus different-class mean cosine of
those features (`sadcl_hf.analysis.label_features`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoModelForImageClassification

from sadcl_hf.analysis.label_features import DEFAULT_MAX_FEATURES, analyze_label_features, plot_label_features
from sadcl_hf.cli import run_script
from sadcl_hf.data import dataset_label_names, load_multilabel_dataset
from sadcl_hf.evaluation import check_dataset_labels


def _name(model: str) -> str:
    """A file name for a model folder (`runs/demo/sadcl/model` -> `sadcl`) or Hub id (`org/name` -> `name`)."""
    parts = [part for part in Path(model).parts if part not in ("model", ".", "..")]
    return parts[-1] if parts else "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", required=True, help="model folders or Hub ids (one figure each)")
    parser.add_argument("--dataset", required=True, help="dataset name (sadcl_hf.data.DATASET_NAMES)")
    parser.add_argument("--split", required=True)
    parser.add_argument("--dataset-root", default=None, help="the dataset's folder (not for digits-mosaic)")
    parser.add_argument("--dataset-options", type=json.loads, default={}, help="extra loader options as JSON")
    parser.add_argument("--output-dir", default="runs/features")
    parser.add_argument("--max-features", type=int, default=DEFAULT_MAX_FEATURES)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="t-SNE seed")
    args = parser.parse_args()

    dataset = load_multilabel_dataset(args.dataset, root=args.dataset_root, split=args.split, **args.dataset_options)
    output_dir = Path(args.output_dir)
    names = [_name(model) for model in args.model]
    if len(set(names)) != len(names):
        names = [f"{index}_{name}" for index, name in enumerate(names)]
    separation = {}
    for model_name_or_path, name in zip(args.model, names):
        model = AutoModelForImageClassification.from_pretrained(model_name_or_path)
        check_dataset_labels(dataset_label_names(dataset), model.config, what=f"{args.dataset} ({args.split})")
        analysis = analyze_label_features(
            model, dataset, max_features=args.max_features, batch_size=args.batch_size, seed=args.seed
        )
        path = plot_label_features(
            analysis, output_dir / f"{name}_tsne.png", title=f"{model_name_or_path} on {args.dataset} {args.split}"
        )
        separation[model_name_or_path] = analysis.scores
        scores = analysis.scores
        print(
            f"{model_name_or_path}: silhouette {scores['silhouette']:.3f}, separation {scores['separation']:.3f} "
            f"(projected: {scores['projected_silhouette']:.3f}, {scores['projected_separation']:.3f}) -> {path}"
        )
    (output_dir / "separation.json").write_text(json.dumps(separation, indent=2))


if __name__ == "__main__":
    run_script(main)
