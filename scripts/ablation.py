#!/usr/bin/env python
"""What the dual contrastive terms add, over seeds: baseline / ASL-only control / SADCL (reference) / SADCL
(corrected) on digits-mosaic (a benchmark, not a test; ~12 runs of 2-5 minutes each for 3 seeds on 2 CPU cores).

    python scripts/ablation.py --seeds 3 --output-dir runs/ablation

Per seed s (the training seed; the dataset stays the same):
  baseline         stage 1 (SARL + ASL), `configs/demo.yaml`'s steps;
  asl-control      stage 1 continued with ASL only for as many steps as stage 2 (the extra training alone);
  sadcl-reference  stage 2 from the stage-1 model: prototypes, then ASL + SSCL + PSCL, the released SSCL;
  sadcl-corrected  the same with the SSCL of the paper's equation (`sscl_mode="corrected"`).
Each run is evaluated on the test split with its EMA weights: mAP and CF1 (%), and the separation of the label-level
features of present classes (`sadcl_hf.analysis.label_features.separation_scores`: cosine silhouette, same-class minus
different-class mean cosine). A finished run leaves `OUTPUT_DIR/seed<s>/<variant>/ablation.json` and is not run
again, so an interrupted ablation resumes. Writes `OUTPUT_DIR/results.json` (every run), `OUTPUT_DIR/ablation.md`
(mean ± std over the seeds that finished) and `OUTPUT_DIR/ablation.png` (bars with ± std error bars).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from transformers import AutoModelForImageClassification

from sadcl_hf.analysis.label_features import analyze_label_features
from sadcl_hf.cli import run_script
from sadcl_hf.data import load_multilabel_dataset
from sadcl_hf.training.recipe import parse_arguments, run_training

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("baseline", "asl-control", "sadcl-reference", "sadcl-corrected")
COLUMNS = {"map": "mAP (%)", "cf1": "CF1 (%)", "silhouette": "silhouette", "separation": "separation"}


def _stage_arguments(variant: str, stage1: Path, sadcl_steps: int, baseline_steps: int | None) -> list[str]:
    if variant == "baseline":
        return ["--stage", "baseline"] + (["--max_steps", str(baseline_steps)] if baseline_steps else [])
    continued = ["--model_name_or_path", str(stage1), "--max_steps", str(sadcl_steps)]
    if variant == "asl-control":
        return ["--stage", "baseline", *continued]
    return ["--stage", "sadcl", "--sscl_mode", variant.removeprefix("sadcl-"), *continued]


def run_variant(variant: str, seed: int, args: argparse.Namespace, test_split) -> dict[str, float]:
    """Trains one variant for one seed (unless its `ablation.json` exists) and returns its test numbers."""
    seed_dir = Path(args.output_dir) / f"seed{seed}"
    run_dir = seed_dir / variant
    result_file = run_dir / "ablation.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    started = time.perf_counter()
    arguments = ["--config", args.config, "--output_dir", str(run_dir), "--eval_split", "test", "--seed", str(seed)]
    arguments += _stage_arguments(variant, seed_dir / "baseline" / "model", args.sadcl_steps, args.baseline_steps)
    if args.dataset_options:
        arguments += ["--dataset_options", json.dumps(args.dataset_options)]
    metrics = run_training(*parse_arguments(arguments))
    model = AutoModelForImageClassification.from_pretrained(run_dir / "model")
    scores = analyze_label_features(model, test_split, max_features=args.max_features, with_tsne=False).scores
    result = {
        "map": metrics["eval_ema_map"],
        "cf1": metrics["eval_ema_cf1"],
        "silhouette": scores["silhouette"],
        "separation": scores["separation"],
        "seconds": time.perf_counter() - started,
    }
    result_file.write_text(json.dumps(result, indent=2))
    return result


def summarize(results: dict[str, dict[int, dict[str, float]]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per variant and column: (mean, sample standard deviation, number of seeds)."""
    summary = {}
    for variant, runs in results.items():
        if runs:
            values = {key: np.array([run[key] for run in runs.values()]) for key in COLUMNS}
            summary[variant] = {
                key: (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)) for key, v in values.items()
            }
    return summary


def markdown_table(summary: dict[str, dict[str, tuple[float, float, int]]]) -> str:
    header = "| variant | seeds | " + " | ".join(COLUMNS.values()) + " |"
    rows = [header, "|---|---|" + "---|" * len(COLUMNS)]
    for variant, columns in summary.items():
        digits = {"map": 2, "cf1": 2, "silhouette": 3, "separation": 3}
        cells = [f"{columns[key][0]:.{digits[key]}f} ± {columns[key][1]:.{digits[key]}f}" for key in COLUMNS]
        rows.append(f"| {variant} | {columns['map'][2]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def bar_chart(summary: dict[str, dict[str, tuple[float, float, int]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(summary)
    colours = matplotlib.colormaps["tab10"](np.arange(len(variants)))
    figure, axes = plt.subplots(1, len(COLUMNS), figsize=(4 * len(COLUMNS), 4))
    for axis, (key, title) in zip(axes, COLUMNS.items()):
        means = np.array([summary[v][key][0] for v in variants])
        stds = np.array([summary[v][key][1] for v in variants])
        axis.bar(range(len(variants)), means, yerr=stds, color=colours, capsize=4)
        low, high = float((means - stds).min()), float((means + stds).max())
        margin = max(high - low, 1e-3) * 0.6
        axis.set_ylim(low - margin, min(high + margin, 100.0) if key in ("map", "cf1") else high + margin)
        axis.set_xticks(range(len(variants)), variants, rotation=30, ha="right", fontsize=8)
        axis.set_title(title)
    seeds = max(summary[v]["map"][2] for v in variants)
    figure.suptitle(f"digits-mosaic test split, mean ± std over {seeds} seed(s)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0 .. N-1")
    parser.add_argument("--output-dir", default="runs/ablation")
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--baseline-steps", type=int, default=None, help="default: the config's max_steps")
    parser.add_argument("--sadcl-steps", type=int, default=300, help="steps of the stage-2 and control runs")
    parser.add_argument("--max-features", type=int, default=2000, help="label-level features for the separation")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument(
        "--dataset-options", type=json.loads, default={}, help='digits-mosaic options as JSON, e.g. {"num_train": 500}'
    )
    args = parser.parse_args()
    if "baseline" not in args.variants:
        parser.error("every variant starts from the stage-1 run: keep 'baseline' in --variants")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    test_split = load_multilabel_dataset("digits-mosaic", split="test", **args.dataset_options)

    results: dict[str, dict[int, dict[str, float]]] = {variant: {} for variant in args.variants}
    for seed in range(args.seeds):
        for variant in args.variants:
            print(f"\n=== seed {seed}: {variant} ===", flush=True)
            results[variant][seed] = run_variant(variant, seed, args, test_split)
            print(json.dumps(results[variant][seed]), flush=True)
            summary = summarize(results)
            (output_dir / "results.json").write_text(json.dumps({"runs": results, "summary": summary}, indent=2))
            (output_dir / "ablation.md").write_text(markdown_table(summary) + "\n")
            bar_chart(summary, output_dir / "ablation.png")

    print("\n" + markdown_table(summarize(results)))
    print(f"\n{output_dir / 'ablation.md'}, {output_dir / 'ablation.png'}, {output_dir / 'results.json'}")


if __name__ == "__main__":
    run_script(main)
