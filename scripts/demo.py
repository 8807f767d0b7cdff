#!/usr/bin/env python
"""The whole SADCL recipe on the embedded digits-mosaic dataset, on CPU (`make demo`).

1. builds digits-mosaic (scikit-learn's handwritten digits in 64 px mosaics; cached after the first run);
2. stage 1: trains the baseline (SARL + ASL), tiny preset, from scratch;
3. stage 2: prototypes from the stage-1 model, then the full SADCL objective;
4. evaluates both on the test split (raw and EMA weights) and prints one table, then how well the label-level
   features of present classes separate by class (cosine silhouette; same-class minus different-class mean cosine);
5. calibrates per-class thresholds on the validation split;
6. saves a Hub-ready folder to OUTPUT_DIR/model (weights, config with labels and thresholds, image processor,
   remote code, model card with the measured results);
7. writes test images to OUTPUT_DIR/examples/test_N.png (the README's snippets tag them), tags them with
   `pipeline("multi-label-image-classification")`, writes attention maps, and the t-SNE
   pictures of the label-level features, projected features and prototypes of the baseline and SADCL models;
8. writes OUTPUT_DIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from sadcl_hf import calibrate_thresholds
from sadcl_hf.analysis.calibration import format_calibration_report
from sadcl_hf.analysis.label_features import analyze_label_features, plot_label_features
from sadcl_hf.cli import run_script
from sadcl_hf.data import dataset_label_names, load_multilabel_dataset
from sadcl_hf.evaluation import metric_names
from sadcl_hf.model_card import save_model_card
from sadcl_hf.serving.attention_maps import save_attention_maps
from sadcl_hf.training.recipe import parse_arguments, read_config_file, run_training

ROOT = Path(__file__).resolve().parents[1]
METRICS = metric_names(top_k=3)
TSNE_ITERATIONS = 500  # half of sklearn's default: keeps the demo within its time budget on 2 CPU cores


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _stage(output_dir: Path, config: Path, dataset_options: dict, extra: list[str]) -> dict[str, dict[str, float]]:
    arguments = ["--config", str(config), "--output_dir", str(output_dir), "--eval_split", "test", *extra]
    if dataset_options:
        arguments += ["--dataset_options", json.dumps(dataset_options)]
    metrics = run_training(*parse_arguments(arguments))
    return {
        "raw": {key: metrics[f"eval_{key}"] for key in METRICS},
        "ema": {key: metrics[f"eval_ema_{key}"] for key in METRICS},
        "train_seconds": metrics["train_runtime"],
    }


def _table(results: dict[str, dict]) -> str:
    columns = [(stage, weights) for stage in results for weights in ("ema", "raw")]
    header = f"{'metric (%)':<14}" + "".join(f"{f'{stage} {weights}':>17}" for stage, weights in columns)
    rows = [header, "-" * len(header)]
    for key in METRICS:
        rows.append(f"{key:<14}" + "".join(f"{results[stage][weights][key]:>17.2f}" for stage, weights in columns))
    return "\n".join(rows)


def _separation_table(analyses: dict) -> str:
    header = f"{'model':<14}{'silhouette':>12}{'separation':>12}{'same-class':>12}{'diff-class':>12}"
    rows = [header + "   (projected: silhouette, separation)", "-" * len(header)]
    for stage, analysis in analyses.items():
        s = analysis.scores
        rows.append(
            f"{stage:<14}{s['silhouette']:>12.3f}{s['separation']:>12.3f}{s['same_class_cosine']:>12.3f}"
            f"{s['different_class_cosine']:>12.3f}   ({s['projected_silhouette']:.3f}, {s['projected_separation']:.3f})"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--baseline-steps", type=int, default=None, help="default: the config's max_steps")
    parser.add_argument("--sadcl-steps", type=int, default=300, help="stage-2 steps (it starts from stage 1)")
    parser.add_argument("--num-examples", type=int, default=8, help="test images to tag and draw attention for")
    parser.add_argument(
        "--dataset-options", type=json.loads, default={}, help='digits-mosaic options as JSON, e.g. {"num_train": 500}'
    )
    parser.add_argument(
        "--asl-control",
        action="store_true",
        help="also continue stage 1 with ASL only for as many steps as stage 2 (separates the contrastive terms' "
        "effect from the extra training; ~2 more minutes)",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    output_dir = Path(args.output_dir)
    config = Path(args.config)

    _banner("1/8 digits-mosaic dataset")
    dataset = load_multilabel_dataset("digits-mosaic", **args.dataset_options)
    names = dataset_label_names(dataset)
    print({split: len(part) for split, part in dataset.items()}, "labels:", names)

    _banner("2/8 stage 1: baseline (SARL + ASL)")
    steps = ["--max_steps", str(args.baseline_steps)] if args.baseline_steps else []
    results = {
        "baseline": _stage(output_dir / "baseline", config, args.dataset_options, ["--stage", "baseline", *steps])
    }

    _banner("3/8 stage 2: prototypes from stage 1, then SADCL (ASL + SSCL + PSCL)")
    steps = ["--max_steps", str(args.sadcl_steps)] if args.sadcl_steps else []
    stage1 = output_dir / "baseline" / "model"
    results["sadcl"] = _stage(
        output_dir / "sadcl",
        config,
        args.dataset_options,
        ["--stage", "sadcl", "--model_name_or_path", str(stage1), *steps],
    )

    if args.asl_control:
        _banner("3/8 control: stage 1 continued with ASL only, as many steps as stage 2")
        results["asl-control"] = _stage(
            output_dir / "asl-control",
            config,
            args.dataset_options,
            ["--stage", "baseline", "--model_name_or_path", str(stage1), *steps],
        )

    _banner("4/8 test-split results (digits-mosaic test; EMA = exponential moving average of the weights)")
    print(_table(results))
    # t-SNE for the pictures of step 7 (baseline and SADCL), the separation numbers for every model.
    analyses = {
        stage: analyze_label_features(
            AutoModelForImageClassification.from_pretrained(output_dir / stage / "model"),
            dataset["test"],
            with_tsne=stage in ("baseline", "sadcl"),
            tsne_max_iter=TSNE_ITERATIONS,
        )
        for stage in results
    }
    first = next(iter(analyses.values())).features
    print(
        f"\nlabel-level features of present classes ({len(first.classes)} features of the first {first.num_images} "
        "test images; EMA weights): cosine silhouette, same-class minus different-class mean cosine"
    )
    print(_separation_table(analyses))

    _banner("5/8 per-class thresholds calibrated on the validation split")
    model = AutoModelForImageClassification.from_pretrained(output_dir / "sadcl" / "model").eval()
    calibration = calibrate_thresholds(model, dataset["validation"], batch_size=128, show_progress=True)
    print(format_calibration_report(calibration))

    _banner("6/8 Hub-ready model folder")
    final_dir = output_dir / "model"
    if final_dir.exists():
        shutil.rmtree(final_dir)
    model.save_pretrained(final_dir)
    processor = AutoImageProcessor.from_pretrained(output_dir / "sadcl" / "model")
    processor.save_pretrained(final_dir)
    save_model_card(
        model,
        final_dir,
        metrics=results["sadcl"]["ema"],
        dataset_name="digits-mosaic",
        training_args=read_config_file(config),
        stage="sadcl (two-stage recipe: baseline, prototypes, SADCL)",
        eval_split="test",
        train_split="train",
    )
    print(f"saved to {final_dir}: {sorted(p.name for p in final_dir.iterdir())}")

    _banner("7/8 tagging test images with pipeline('multi-label-image-classification')")
    tagger = pipeline("multi-label-image-classification", model=str(final_dir), device="cpu")
    examples = dataset["test"].select(range(args.num_examples))
    images = list(examples["image"])
    examples_dir = output_dir / "examples"
    examples_dir.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        image.save(examples_dir / f"test_{index}.png")
    predictions = tagger(images, batch_size=args.num_examples)
    for index, (prediction, true_ids) in enumerate(zip(predictions, examples["labels"])):
        predicted = ", ".join(f"{p['label']} ({p['score']:.2f})" for p in prediction)
        truth = ", ".join(sorted(names[i] for i in true_ids))
        print(f"test[{index}]  true: {truth:<12} predicted: {predicted}")
    attention_dir = output_dir / "attention"
    written = save_attention_maps(
        model, processor, images, attention_dir, names=[f"test_{i}" for i in range(len(images))]
    )
    print(f"attention maps: {len(written)} pictures in {attention_dir}")
    print(f"example images (the README's snippets tag them): {examples_dir}/test_0.png ... test_{len(images) - 1}.png")
    features_dir = output_dir / "label_features"
    titles = {"baseline": "baseline (stage 1, ASL)", "sadcl": "SADCL (stage 2, ASL + SSCL + PSCL)"}
    pictures = [
        plot_label_features(analyses[stage], features_dir / f"tsne_{stage}.png", title=title)
        for stage, title in titles.items()
    ]
    print(f"t-SNE pictures: {', '.join(str(path) for path in pictures)}")

    _banner("8/8 results")
    wall_seconds = time.perf_counter() - start
    summary = {
        "baseline": results["baseline"]["ema"],
        "sadcl": results["sadcl"]["ema"],
        "baseline_raw": results["baseline"]["raw"],
        "sadcl_raw": results["sadcl"]["raw"],
        "calibration": {"validation_before": calibration["before"], "validation_after": calibration["after"]},
        **({"asl_control": results["asl-control"]["ema"]} if args.asl_control else {}),
        "label_feature_separation": {stage: analysis.scores for stage, analysis in analyses.items()},
        "train_seconds": {stage: results[stage]["train_seconds"] for stage in results},
        "wall_seconds": wall_seconds,
        "torch_threads": torch.get_num_threads(),
    }
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2))
    control = f", ASL-only control {summary['asl_control']['map']:.2f}" if args.asl_control else ""
    print(f"test mAP (EMA): baseline {summary['baseline']['map']:.2f}, SADCL {summary['sadcl']['map']:.2f}{control}")
    print(f"wall time: {wall_seconds:.0f} s")
    print(f"model: {final_dir}\nattention maps: {attention_dir}\nt-SNE pictures: {features_dir}")
    print(f"results: {output_dir / 'results.json'}")
    print(f"runs: {output_dir / 'baseline'} (stage 1), {output_dir / 'sadcl'} (stage 2)")


if __name__ == "__main__":
    run_script(main)
