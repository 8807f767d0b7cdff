#!/usr/bin/env python
# Copyright 2025 The sadcl-hf developers. Licensed under the Apache License, Version 2.0.
"""Benchmarks for sadcl-hf.

One subcommand per benchmark, each printing a table and optionally writing `--json FILE`:

    python scripts/benchmark.py losses [--batch-size 32 --num-labels 80 --dim 1024 --repeats 20 --json out.json]
    python scripts/benchmark.py train-step [--preset tiny --batch-size 64 --precision fp32|bf16|fp16 --device auto]
    python scripts/benchmark.py inference [--preset tiny --batch-size 64 --source-size 256]
    python scripts/benchmark.py data --dataset folder --root DIR [--make-images 352 --image-size 448]
    python scripts/benchmark.py serving --model runs/demo/model [--batch-size 64 --threads 2]
    python scripts/benchmark.py tagging [--model DIR --num-images 32 --batch-size 16 --num-workers 2 --output out.json]
    python scripts/benchmark.py streaming [--num-images 4000 --num-shards 8 --steps 300]

`losses` times forward + backward of SSCL + PSCL at paper scale (sadcl-hf in reference and corrected mode, against
a dense `(B*V*K)^2` re-implementation of the released algorithm kept here only as the baseline) and measures the
peak extra resident memory of each variant in a fresh subprocess. `train-step` measures images/s and peak memory
(CUDA allocator peak on a GPU, peak RSS on CPU) of whole training steps; `inference` compares the tagging pipeline
with the bare model forward on the same batch; `data` measures images/s of one data-loading worker on the training
path (decode + the paper's augmentation + collate) on JPEGs it can write itself (`--make-images N`); `serving`
compares PyTorch eager with ONNX Runtime float32 and static int8 on a saved model (and the int8 mAP change for the
demo model); `tagging` times `predict.py`'s path end to end on generated 12 MP JPEGs for each backend beside its
decode-only and model-only limits, and the web tagger under 1 and 16 concurrent clients; `streaming` samples the
resident memory of a training run that streams parquet shards.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

LOSS_VARIANTS = ("sadcl-hf reference", "sadcl-hf corrected", "dense released")


# --------------------------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------------------------


def print_table(title: str, rows: list[dict[str, object]], columns: list[str]) -> None:
    """Prints `rows` (dicts) as a fixed-width table with the given `columns`."""

    def fmt(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    cells = [[fmt(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    print(title)
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths)))
    print("  ".join("-" * width for width in widths))
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))


def current_rss_mib() -> float:
    """Resident set size of this process now, in MiB (Linux `/proc/self/statm`)."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (`ru_maxrss` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_json(path: str | None, payload: dict[str, object]) -> None:
    if path:
        with open(path, "w") as handle:
            json.dump(payload, handle, indent=2)
        print(f"wrote {path}")


# --------------------------------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------------------------------


def coco_like_labels(batch_size: int, num_labels: int, generator: torch.Generator) -> torch.Tensor:
    """Multi-hot labels with about 3 positives per image, class 0 ("person") in about 55% of the images."""
    probabilities = torch.full((num_labels,), 2.45 / max(num_labels - 1, 1))
    probabilities[0] = 0.55
    return torch.bernoulli(probabilities.expand(batch_size, num_labels), generator=generator)


def make_loss_inputs(batch_size: int, num_labels: int, dim: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    labels = coco_like_labels(batch_size, num_labels, generator)
    label_features = torch.randn(batch_size, num_labels, dim, generator=generator).requires_grad_()
    memory_bank = torch.randn(batch_size, num_labels, dim, generator=generator).requires_grad_()
    prototypes = torch.randn(num_labels, dim, generator=generator).requires_grad_()
    return label_features, memory_bank, prototypes, labels


def build_loss_step(variant: str) -> Callable:
    """Returns `step(label_features, memory_bank, prototypes, labels) -> loss` for one variant (SSCL + PSCL)."""
    from sadcl_hf.losses import PrototypeToSampleContrastiveLoss, SampleToSampleContrastiveLoss

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.released_losses import dense_released_pscl, dense_released_sscl

    if variant == "dense released":

        def step(label_features, memory_bank, prototypes, labels):
            features = torch.stack([label_features, memory_bank], dim=1)
            return dense_released_sscl(features, labels) + dense_released_pscl(label_features, prototypes, labels)

        return step
    mode = variant.split()[-1]
    sscl = SampleToSampleContrastiveLoss(mode=mode)
    pscl = PrototypeToSampleContrastiveLoss()

    def step(label_features, memory_bank, prototypes, labels):
        return sscl.forward_views([label_features, memory_bank], labels) + pscl(label_features, prototypes, labels)

    return step


def losses_worker(args: argparse.Namespace) -> dict[str, object]:
    """Runs one variant in this (fresh) process: median time and peak extra RSS of forward + backward."""
    if args.threads:
        torch.set_num_threads(args.threads)
    step = build_loss_step(args.worker)
    # Warm up on a tiny problem so that one-time library initialisation is not counted as the loss's memory.
    tiny = make_loss_inputs(2, min(args.num_labels, 4), 8)
    step(*tiny).backward()
    inputs = make_loss_inputs(args.batch_size, args.num_labels, args.dim)
    gc.collect()
    rss_before = current_rss_mib()
    times = []
    loss_value = float("nan")
    for _ in range(args.repeats):
        for tensor in inputs[:3]:
            tensor.grad = None
        start = time.perf_counter()
        loss = step(*inputs)
        loss.backward()
        times.append(time.perf_counter() - start)
        loss_value = loss.item()
    return {
        "variant": args.worker,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "peak_extra_mib": max(peak_rss_mib() - rss_before, 0.0),
        "loss": loss_value,
        "num_positive_labels": int(inputs[3].sum().item()),
        "threads": torch.get_num_threads(),
    }


def run_losses(args: argparse.Namespace) -> dict[str, object]:
    """`losses` subcommand: one fresh subprocess per variant, then a table."""
    if args.worker:
        print(json.dumps(losses_worker(args)))
        return {}
    rows = []
    for variant in LOSS_VARIANTS:
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "losses",
            "--worker",
            variant,
            "--batch-size",
            str(args.batch_size),
            "--num-labels",
            str(args.num_labels),
            "--dim",
            str(args.dim),
            "--repeats",
            str(args.baseline_repeats if variant == "dense released" else args.repeats),
            "--threads",
            str(args.threads),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"benchmark worker for {variant!r} failed:\n{result.stderr}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    dense = next(row for row in rows if row["variant"] == "dense released")
    for row in rows:
        row["speedup"] = dense["median_s"] / row["median_s"]
    print_table(
        f"SSCL + PSCL forward+backward, B={args.batch_size} V=2 K={args.num_labels} D={args.dim}, "
        f"{rows[0]['num_positive_labels']} positive labels, {rows[0]['threads']} thread(s), "
        f"median of {args.repeats} ({args.baseline_repeats} for the dense baseline)",
        rows,
        ["variant", "median_s", "min_s", "speedup", "peak_extra_mib", "loss"],
    )
    reference = next(row for row in rows if row["variant"] == "sadcl-hf reference")
    print(f"|loss(sadcl-hf reference) - loss(dense released)| = {abs(reference['loss'] - dense['loss']):.3g}")
    payload = {"benchmark": "losses", "config": vars(args), "results": rows}
    write_json(args.json, payload)
    return payload


# --------------------------------------------------------------------------------------------------------------------
# train-step and inference
# --------------------------------------------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def run_train_step(args: argparse.Namespace) -> dict[str, object]:
    """`train-step`: images/s and peak memory of full SADCL training steps (forward with the objective, backward,
    AdamW step) for a preset, batch size and precision, on random images with COCO-like labels."""
    from sadcl_hf import SADCLConfig, SADCLForImageClassification

    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    config = SADCLConfig.from_preset(args.preset, use_pretrained_backbone=False, objective=args.objective)
    model = SADCLForImageClassification(config).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(args.batch_size, 3, config.image_size, config.image_size, generator=generator)
    labels = coco_like_labels(args.batch_size, config.num_labels, generator)
    pixel_values, labels = pixel_values.to(device), labels.to(device)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, args.precision):
            loss = model(pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.repeats):
        _synchronize(device)
        start = time.perf_counter()
        loss = step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    row = {
        "preset": args.preset,
        "objective": args.objective,
        "batch": args.batch_size,
        "precision": args.precision,
        "device": str(device),
        "median_step_s": median,
        "images_per_s": args.batch_size / median,
        "peak_memory_mib": _peak_memory_mib(device),
        "loss": loss,
    }
    print_table(f"training step, median of {args.repeats} after {args.warmup} warm-up steps", [row], list(row))
    payload = {"benchmark": "train-step", "config": vars(args), "results": [row]}
    write_json(args.json, payload)
    return payload


def run_inference(args: argparse.Namespace) -> dict[str, object]:
    """`inference`: `pipeline("multi-label-image-classification")` images/s versus the bare model forward on the same
    batch (already preprocessed tensors); the difference is the pipeline's overhead (decoding, preprocessing,
    post-processing)."""
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    from sadcl_hf import SADCLConfig, SADCLForImageClassification
    from sadcl_hf.image_processing import image_processor_for_config

    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    config = SADCLConfig.from_preset(args.preset, use_pretrained_backbone=False)
    model = SADCLForImageClassification(config).to(device).eval()
    processor = image_processor_for_config(config)
    rng = np.random.default_rng(0)
    size = args.source_size or config.image_size
    images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(args.batch_size)]
    tagger = pipeline("multi-label-image-classification", model=model, image_processor=processor, device=device)
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].to(device)

    def bare() -> None:
        with torch.inference_mode():
            model(pixel_values)
        _synchronize(device)

    def full() -> None:
        tagger(images, batch_size=args.batch_size)
        _synchronize(device)

    rows = []
    for name, function in (("model forward", bare), ("pipeline", full)):
        for _ in range(args.warmup):
            function()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        rows.append({"path": name, "median_batch_s": median, "images_per_s": args.batch_size / median})
    overhead = rows[1]["median_batch_s"] / rows[0]["median_batch_s"] - 1
    for row in rows:
        row["overhead_vs_forward"] = f"{100 * (row['median_batch_s'] / rows[0]['median_batch_s'] - 1):.1f}%"
    print_table(
        f"inference, preset {args.preset}, batch {args.batch_size}, {size}px source images, {device}, "
        f"median of {args.repeats}",
        rows,
        ["path", "median_batch_s", "images_per_s", "overhead_vs_forward"],
    )
    payload = {"benchmark": "inference", "config": vars(args), "results": rows, "pipeline_overhead": overhead}
    write_json(args.json, payload)
    return payload


# --------------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------------


def make_folder_images(root: str, count: int, size: tuple = (640, 480), seed: int = 0) -> None:
    """Writes `count` COCO-like JPEGs (`size` = (width, height), quality 90) with a `metadata.jsonl` to `root`:
    random crops of scikit-learn's sample photographs, resized, some flipped, each with 1-3 of 5 labels."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    os.makedirs(root, exist_ok=True)
    photos = [Image.fromarray(array) for array in load_sample_images().images]
    rng = np.random.default_rng(seed)
    names = ["china", "flower", "sky", "stone", "leaf"]
    with open(os.path.join(root, "metadata.jsonl"), "w") as metadata:
        for index in range(count):
            photo = photos[index % len(photos)]
            left, top = (int(rng.integers(0, side // 4)) for side in photo.size)
            crop = photo.crop((left, top, left + photo.width * 3 // 4, top + photo.height * 3 // 4))
            image = crop.resize(size, Image.BICUBIC)
            if rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            file_name = f"{index:06d}.jpg"
            image.save(os.path.join(root, file_name), quality=90)
            labels = sorted(rng.choice(names, size=int(rng.integers(1, 4)), replace=False).tolist())
            metadata.write(json.dumps({"file_name": file_name, "labels": labels}) + "\n")
    print(f"wrote {count} {size[0]}x{size[1]} JPEGs and metadata.jsonl to {root}")


def run_data(args: argparse.Namespace) -> dict[str, object]:
    """`data`: images/s of one data-loading worker on the training path (dataset row with its decoded image, the
    training transform of the paper's recipe at `--image-size`, collation), single process and single thread."""
    from sadcl_hf.data import MultiLabelCollator, build_train_transform, load_multilabel_dataset

    torch.set_num_threads(args.threads or 1)
    if args.make_images:
        make_folder_images(args.root, args.make_images)
    dataset = load_multilabel_dataset(args.dataset, root=args.root, split=args.split)
    num_labels = len(dataset.features["labels"].feature.names)
    transform = build_train_transform(args.image_size, randaugment=args.randaugment, cutout=args.cutout)
    collator = MultiLabelCollator(num_labels, transform)
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, collate_fn=collator, generator=generator, drop_last=True
    )
    if len(loader) < 2:
        raise SystemExit(f"{args.root}: need at least {2 * args.batch_size} images (one warm-up batch)")
    wall, cpu, count = 0.0, 0.0, 0
    batches = iter(loader)
    next(batches)
    for _ in range(min(args.batches, len(loader) - 1)):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        batch = next(batches)
        wall += time.perf_counter() - start_wall
        cpu += time.process_time() - start_cpu
        count += batch["pixel_values"].shape[0]
    row = {
        "dataset": args.dataset,
        "image_size": args.image_size,
        "batch": args.batch_size,
        "images": count,
        "augment": "crop+flip" + ("+randaugment" if args.randaugment else "") + ("+cutout" if args.cutout else ""),
        "images_per_s": count / wall,
        "images_per_cpu_s": count / cpu,
    }
    print_table(
        "training data path, one worker (1 thread): decode + augmentation + collate; the paper's recipe needs about "
        "60 img/s per worker (images_per_cpu_s ignores time lost to other processes on a shared machine)",
        [row],
        list(row),
    )
    payload = {"benchmark": "data", "config": vars(args), "results": [row]}
    write_json(args.json, payload)
    return payload


# --------------------------------------------------------------------------------------------------------------------
# serving
# --------------------------------------------------------------------------------------------------------------------


def _interleaved_images_per_second(
    runners: dict[str, Callable[[], object]], batch_size: int, warmup: int, min_seconds: float
) -> dict[str, float]:
    """Median images/s of each runner (one batch per call). The runners take turns in blocks, round after round (at
    least 3 rounds and `min_seconds` in all), so a load that comes and goes on a shared machine hits them alike; each
    block starts with `warmup` untimed calls, so the previous runner's threads (OpenMP and onnxruntime spin-wait
    after their work) have settled before timing."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    start_all = time.perf_counter()
    rounds = 0
    while rounds < 3 or time.perf_counter() - start_all < min_seconds:
        for name, runner in runners.items():
            for _ in range(warmup):
                runner()
            for _ in range(3):
                start = time.perf_counter()
                runner()
                times[name].append(time.perf_counter() - start)
        rounds += 1
    return {name: batch_size / statistics.median(values) for name, values in times.items()}


def onnx_settings_sessions(path, config, threads: int) -> dict[str, object]:
    """ONNX Runtime sessions of the float graph `path` with the settings that `onnx_session` does not choose (lower
    graph optimisation levels, parallel execution, one thread, spin-waiting threads, the transformer optimizer's
    fusions):
    `serving --profile` times them beside the default, which is why the default is what it is."""
    import tempfile

    import onnxruntime
    from onnxruntime.transformers import optimizer

    def session(level=onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL, file=path, num_threads=threads, **settings):
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = level
        options.intra_op_num_threads = num_threads
        for key, value in settings.items():
            if key == "config":
                options.add_session_config_entry(*value)
            else:
                setattr(options, key, value)
        return onnxruntime.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])

    fused = optimizer.optimize_model(
        str(path), model_type="vit", num_heads=config.num_attention_heads, hidden_size=config.hidden_dim, opt_level=0
    )
    fused_path = os.path.join(tempfile.mkdtemp(), "fused.onnx")
    fused.save_model_to_file(fused_path)
    return {
        "fp32_extended": session(onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
        "fp32_basic": session(onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        "fp32_parallel": session(execution_mode=onnxruntime.ExecutionMode.ORT_PARALLEL, inter_op_num_threads=threads),
        "fp32_1_thread": session(num_threads=1),
        "fp32_spin": session(config=("session.intra_op.allow_spinning", "1")),
        "fp32_transformer_optimizer": session(file=fused_path),
    }


def onnx_operator_shares(path, pixel_values, threads: int, runs: int = 5) -> dict[str, float]:
    """Share of ONNX Runtime's kernel time per operator type (its profiler, `runs` runs of `pixel_values`), largest
    first, operators under 1% left out."""
    import collections

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(["logits"], {"pixel_values": pixel_values})
    with open(session.end_profiling()) as handle:
        events = json.load(handle)
    os.remove(handle.name)
    durations: dict[str, float] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            durations[event["args"]["op_name"]] += event["dur"]
    total = sum(durations.values())
    return {name: value / total for name, value in durations.most_common() if value / total >= 0.01}


def run_serving(args: argparse.Namespace) -> dict[str, object]:
    """`serving`: images/s of PyTorch eager, ONNX Runtime float32 and ONNX Runtime static int8 on the same
    preprocessed images (batch 1 and `--batch-size`, at the model's size), and the int8 mAP change on the
    digits-mosaic test split when the model is the demo's (digit labels)."""
    from pathlib import Path

    import numpy as np
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import sadcl_hf  # noqa: F401  (registers the Auto classes)
    from sadcl_hf.data import load_multilabel_dataset
    from sadcl_hf.image_processing import evaluation_dataloader
    from sadcl_hf.serving.onnx_export import (
        ONNX_FILE_NAME,
        ONNX_INT8_FILE_NAME,
        compare_onnx_models,
        export_onnx,
        onnx_session,
        quantize_onnx_int8,
    )

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    folder = Path(args.model)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    config = model.config
    is_demo = config.label_names == [str(digit) for digit in range(10)]
    fp32_path, int8_path = folder / ONNX_FILE_NAME, folder / ONNX_INT8_FILE_NAME
    if not fp32_path.is_file():
        export_onnx(model, fp32_path)
    if not int8_path.is_file():
        if not is_demo:
            raise SystemExit(
                f"{int8_path} is missing: run scripts/export_onnx.py {folder} --quantize int8 "
                "--calibration-dataset NAME --calibration-split validation"
            )
        calibration = load_multilabel_dataset("digits-mosaic", split="validation")
        calibration = calibration.select(range(min(256, len(calibration))))
        batches = evaluation_dataloader(config, calibration)
        quantize_onnx_int8(fp32_path, int8_path, (batch["pixel_values"] for batch in batches))

    size = config.image_size
    if is_demo:
        test_batches = list(evaluation_dataloader(config, load_multilabel_dataset("digits-mosaic", split="test"), 64))
        pixel_values = np.concatenate([batch["pixel_values"].numpy() for batch in test_batches])[: args.batch_size]
    else:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(args.batch_size)]
        pixel_values = AutoImageProcessor.from_pretrained(folder)(images=images, return_tensors="np")["pixel_values"]
    pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
    sessions = {name: onnx_session(path, threads) for name, path in (("fp32", fp32_path), ("int8", int8_path))}
    if args.profile:
        sessions.update(onnx_settings_sessions(fp32_path, config, threads))
        channels_last_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as flop_counter, torch.inference_mode():
        model(torch.from_numpy(pixel_values[:1]))
    gflop_per_image = flop_counter.get_total_flops() / 1e9

    rows = []
    results: dict[str, object] = {}
    for batch_size in (1, args.batch_size):
        batch = pixel_values[:batch_size]
        batch_tensor = torch.from_numpy(batch)

        channels_last_batch = batch_tensor.contiguous(memory_format=torch.channels_last)

        def eager(batch_tensor: torch.Tensor = batch_tensor) -> None:
            with torch.inference_mode():
                model(batch_tensor)

        def eager_no_grad(batch_tensor: torch.Tensor = batch_tensor) -> None:
            with torch.no_grad():
                model(batch_tensor)

        def eager_channels_last(channels_last_batch: torch.Tensor = channels_last_batch) -> None:
            with torch.inference_mode():
                channels_last_model(channels_last_batch)

        runners = {"eager": eager}
        if args.profile:
            runners.update({"eager_no_grad": eager_no_grad, "eager_channels_last": eager_channels_last})
        for name, session in sessions.items():
            runners[f"ort_{name}"] = lambda session=session, batch=batch: session.run(
                ["logits"], {"pixel_values": batch}
            )
        load_before = load_average()
        speeds = _interleaved_images_per_second(runners, batch_size, args.warmup, args.min_seconds)
        load_after = load_average()
        for name, speed in speeds.items():
            rows.append({
                "batch": batch_size, "backend": name, "images_per_s": speed, "vs_eager": speed / speeds["eager"],
                "gflop_s": speed * gflop_per_image, "load": f"{load_before}-{load_after}",
            })  # fmt: skip
        if batch_size == args.batch_size:
            results.update({f"{name}_img_s": speed for name, speed in speeds.items()})
    print_table(
        f"serving {folder} ({size} px, {threads} thread(s), backends interleaved, median over >= "
        f"{args.min_seconds:g} s per batch size)",
        rows,
        ["batch", "backend", "images_per_s", "vs_eager", "gflop_s", "load"],
    )
    results["gflop_per_image"] = gflop_per_image
    if args.profile:
        results["ort_fp32_time_by_operator"] = onnx_operator_shares(fp32_path, pixel_values, threads)
        print("ONNX Runtime fp32 time by operator:", ", ".join(
            f"{name} {100 * share:.1f}%" for name, share in results["ort_fp32_time_by_operator"].items()
        ))  # fmt: skip
    results["int8_map_change"] = None
    if is_demo:
        comparison = compare_onnx_models(fp32_path, int8_path, test_batches)
        results["int8_map_change"] = comparison["map_change"]
        print(
            f"digits-mosaic test mAP: ORT float32 {comparison['reference_map']:.2f}, ORT int8 "
            f"{comparison['candidate_map']:.2f} (change {comparison['map_change']:+.2f} points); tag agreement at 0.5 "
            f"{100 * comparison['tag_agreement']:.2f}%"
        )
    fp32_speedup = results["ort_fp32_img_s"] / results["eager_img_s"]
    int8_speedup = results["ort_int8_img_s"] / results["ort_fp32_img_s"]
    print(
        f"batch {args.batch_size}: ORT fp32 {fp32_speedup:.2f}x eager (target >= 2); "
        f"int8 {int8_speedup:.2f}x ORT fp32 (target >= 1.5)"
    )
    payload = {"benchmark": "serving", "config": vars(args), "threads": threads, **results, "results": rows}
    write_json(args.json, payload)
    return payload


# --------------------------------------------------------------------------------------------------------------------
# tagging
# --------------------------------------------------------------------------------------------------------------------

TAGGING_BACKENDS = ("pytorch", "onnx", "onnx-int8")
PHONE_PHOTO_SIZE = (4032, 3024)  # a 12 MP phone photo, (width, height)


def load_average() -> float:
    """The machine's 1-minute load average (`uptime`): measurements on a shared machine carry it."""
    return round(os.getloadavg()[0], 2)


def best_of(repeats: int, measures: dict[str, Callable[[], float]]) -> dict[str, dict[str, object]]:
    """Runs each of `measures` (each returns images/s) `repeats` times, taking turns round after round so that a
    load that comes and goes on a shared machine hits them alike: per measure the best value, every value and the
    load average before each run."""
    results: dict[str, dict[str, object]] = {name: {"values": [], "load_averages": []} for name in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            results[name]["load_averages"].append(load_average())
            results[name]["values"].append(measure())
    for result in results.values():
        result["best"] = max(result["values"])
    return results


def image_size_argument(text: str) -> tuple:
    """'WIDTHxHEIGHT' -> (width, height)."""
    try:
        width, height = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 4032x3024, got {text!r}") from None
    return width, height


def phone_photo_folder(cache_dir: str, count: int, seed: int, size: tuple = PHONE_PHOTO_SIZE) -> str:
    """A folder of `count` JPEGs of `size` (default 12 MP; [`make_folder_images`], fixed seed), written once and
    reused."""
    folder = os.path.join(cache_dir, f"jpegs-{size[0]}x{size[1]}-seed{seed}-n{count}")
    done = os.path.join(folder, ".complete")
    if not os.path.exists(done):
        make_folder_images(folder, count, size=size, seed=seed)
        open(done, "w").close()
    return folder


def demo_sized_model_folder(args: argparse.Namespace, calibration_images: list[str]) -> str:
    """`--model` if given, else `runs/demo/model` if present, else a demo-sized model (the `tiny` preset with the
    demo's 10 digit labels, as `configs/demo.yaml` trains it; random weights, seed 0) saved once to the cache. Its
    `onnx/model.onnx` and static int8 `onnx/model_quantized.onnx` are exported when missing (int8 calibrated on the
    benchmark's own images, preprocessed by the model's image processor)."""
    from pathlib import Path

    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from sadcl_hf import SADCLConfig, SADCLForImageClassification
    from sadcl_hf.image_processing import image_processor_for_config
    from sadcl_hf.serving.onnx_export import ONNX_FILE_NAME, ONNX_INT8_FILE_NAME, export_onnx, quantize_onnx_int8
    from sadcl_hf.serving.pipeline import load_pipeline_image

    demo_model = Path(__file__).resolve().parents[1] / "runs" / "demo" / "model"
    if args.model:
        folder = Path(args.model)
    elif demo_model.is_dir():
        folder = demo_model
    else:
        folder = Path(args.cache_dir) / "demo-sized-model"
        if not (folder / "config.json").is_file():
            torch.manual_seed(0)
            config = SADCLConfig.from_preset("tiny", use_pretrained_backbone=False)
            model = SADCLForImageClassification(config).eval()
            model.save_pretrained(folder)
            image_processor_for_config(config).save_pretrained(folder)
    fp32_path, int8_path = folder / ONNX_FILE_NAME, folder / ONNX_INT8_FILE_NAME
    if not fp32_path.is_file():
        export_onnx(AutoModelForImageClassification.from_pretrained(folder), fp32_path)
    if not int8_path.is_file():
        processor = AutoImageProcessor.from_pretrained(folder)
        calibration = [  # one image per batch: 12 MP images are not all held at once
            processor(images=load_pipeline_image(path), return_tensors="np")["pixel_values"]
            for path in calibration_images
        ]
        quantize_onnx_int8(fp32_path, int8_path, calibration)
    return str(folder)


def tagger_load(
    model: str,
    backend: str,
    image_paths: list[str],
    clients: list[int],
    repeats: int,
    max_batch_size: int,
    requests: int,
) -> dict[str, object]:
    """Requests/s and p50/p95 latency of the web tagger (`sadcl_hf.serving.web.build_app`, launched on loopback with the
    `backend`) at each number of concurrent `clients`, each sending images of `image_paths`, through
    `sadcl_hf.serving.web.tagger_load_benchmark`: the best of `repeats` runs per number of clients, with every run and
    the load average before it. `max_batch_size` 1 is the tagger without request batching (one request per forward).
    Each run sends about `requests` requests (at least 8 per client)."""
    import socket

    from sadcl_hf.serving.web import WebTagger, build_app, tagger_load_benchmark

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = build_app(WebTagger(model, backend=backend), max_batch_size=max_batch_size).queue()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        runs: dict[str, list[dict[str, object]]] = {str(count): [] for count in clients}
        for _ in range(repeats):
            for count in clients:
                load = load_average()
                result = tagger_load_benchmark(
                    f"http://127.0.0.1:{port}/", image_paths, clients=[count],
                    requests_per_client=max(8, requests // count),
                )[count]  # fmt: skip
                runs[str(count)].append({**result, "load_average": load})
    finally:
        app.close()
    results: dict[str, object] = {
        count: {**max(values, key=lambda run: run["requests_per_s"]), "runs": values} for count, values in runs.items()
    }
    if len(clients) > 1:
        results["speedup"] = results[str(clients[-1])]["requests_per_s"] / results[str(clients[0])]["requests_per_s"]
    return results


def run_tagging(args: argparse.Namespace) -> dict[str, object]:
    """`tagging`: images/s of `predict.py`'s path (`sadcl_hf.serving.batch.predict_images`: decode, preprocess, forward,
    records written) on a folder of 12 MP JPEGs for each backend, beside the limits of that path: model-only
    images/s (the forward alone on the same preprocessed batches) and decode-only images/s (loading and preprocessing
    as `predict_images` does, with its DataLoader workers, no model), and the previous path with PyTorch (full decode,
    one image at a time, no workers) that `e2e/previous` compares with; then the web tagger's requests/s and latency
    at 1 and 16 concurrent clients. Each figure is the best of `--repeats` runs, with the load average before each."""
    import platform

    from sadcl_hf.serving.batch import PredictionWriter, TaggingInputs, expand_inputs, predict_images
    from sadcl_hf.serving.pipeline import load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = phone_photo_folder(args.cache_dir, args.num_images, args.seed, args.photo_size)
    paths = expand_inputs([folder])
    model_folder = demo_sized_model_folder(args, paths)

    def decode_only(num_workers: int) -> Callable[[], float]:
        def measure() -> float:
            processor = taggers["pytorch"].image_processor
            dataset = TaggingInputs(paths, processor)
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=args.batch_size, num_workers=num_workers, collate_fn=list
            )
            start = time.perf_counter()
            for _ in loader:
                pass
            return len(paths) / (time.perf_counter() - start)

        return measure

    def end_to_end(tagger, num_workers: int) -> Callable[[], float]:
        def measure() -> float:
            with open(os.devnull, "w") as sink:
                writer = PredictionWriter(sink, "jsonl", tagger.model.config.label_names)
                start = time.perf_counter()
                for record in predict_images(tagger, paths, batch_size=args.batch_size, num_workers=num_workers):
                    if "error" in record:
                        raise RuntimeError(record["error"])
                    writer.write(record)
                return len(paths) / (time.perf_counter() - start)

        return measure

    def full_decode_loop(tagger) -> Callable[[], float]:
        """The path before draft decoding and DataLoader workers: each image decoded at full size, preprocessed
        and scored alone on the main process (a plain decode-and-forward loop)."""
        from sadcl_hf.data.images import load_image

        def measure() -> float:
            start = time.perf_counter()
            with torch.inference_mode():
                for path in paths:
                    pixel_values = tagger.image_processor(images=load_image(path), return_tensors="pt")["pixel_values"]
                    tagger.model(pixel_values=pixel_values.to(tagger.device, tagger.dtype)).logits.sigmoid()
            return len(paths) / (time.perf_counter() - start)

        return measure

    def model_only(tagger, batches: list[torch.Tensor]) -> Callable[[], float]:
        def measure() -> float:
            start = time.perf_counter()
            with torch.inference_mode():
                for pixel_values in batches:
                    tagger.model(pixel_values=pixel_values.to(tagger.device, tagger.dtype))
            return len(paths) / (time.perf_counter() - start)

        return measure

    taggers = {backend: load_pipeline(model_folder, "cpu", backend=backend) for backend in args.backends}
    taggers.setdefault("pytorch", load_pipeline(model_folder, "cpu"))
    dataset = TaggingInputs(paths, taggers["pytorch"].image_processor)
    items = [dataset[index] for index in range(len(dataset))]
    batches = [
        torch.stack([item["pixel_values"] for item in items[start : start + args.batch_size]])
        for start in range(0, len(items), args.batch_size)
    ]
    worker_counts = sorted({0, args.num_workers})
    measures = {f"decode_only workers_{count}": decode_only(count) for count in worker_counts}
    measures["pytorch full_decode_loop"] = full_decode_loop(taggers["pytorch"])
    for backend in args.backends:
        model_only(taggers[backend], batches[:1])()  # warm-up (one-time allocations, ONNX Runtime's first run)
        measures[f"{backend} model_only"] = model_only(taggers[backend], batches)
        for count in worker_counts:
            measures[f"{backend} end_to_end_workers_{count}"] = end_to_end(taggers[backend], count)
    measured = best_of(args.repeats, measures)
    decode = {f"workers_{count}": measured[f"decode_only workers_{count}"] for count in worker_counts}
    backends = {}
    for backend in args.backends:
        row = {name.split(" ")[1]: value for name, value in measured.items() if name.split(" ")[0] == backend}
        decode_limit = decode[f"workers_{args.num_workers}"]["best"]
        limit = min(decode_limit, row["model_only"]["best"])
        best_end_to_end = row[f"end_to_end_workers_{args.num_workers}"]["best"]
        row["limit_img_s"] = limit
        row["end_to_end_vs_limit"] = best_end_to_end / limit
        row["end_to_end_vs_workers_0"] = best_end_to_end / row["end_to_end_workers_0"]["best"]
        backends[backend] = row
    previous_path = measured["pytorch full_decode_loop"]
    for row in backends.values():
        row["end_to_end_vs_previous_path"] = (
            row[f"end_to_end_workers_{args.num_workers}"]["best"] / previous_path["best"]
        )
    serving = {}
    tagger_paths = expand_inputs([args.tagger_images]) if args.tagger_images else paths
    if args.clients:
        for backend in args.serving_backends:
            serving[backend] = tagger_load(
                model_folder, backend, tagger_paths, args.clients, args.repeats, args.max_batch_size,
                args.tagger_requests,
            )  # fmt: skip
        if args.unbatched_baseline:
            serving["pytorch, max_batch_size 1"] = tagger_load(
                model_folder, "pytorch", tagger_paths, args.clients, args.repeats, 1, args.tagger_requests
            )

    rows = []
    for backend, row in backends.items():
        rows.append({
            "backend": backend,
            "end_to_end_w0": row["end_to_end_workers_0"]["best"],
            f"end_to_end_w{args.num_workers}": row[f"end_to_end_workers_{args.num_workers}"]["best"],
            "model_only": row["model_only"]["best"],
            f"decode_only_w{args.num_workers}": decode[f"workers_{args.num_workers}"]["best"],
            "e2e/limit": row["end_to_end_vs_limit"],
            "e2e/previous": row["end_to_end_vs_previous_path"],
        })  # fmt: skip
    columns = list(rows[0])
    print_table(
        f"tagging {len(paths)} {args.photo_size[0]}x{args.photo_size[1]} JPEGs with {model_folder}, batch "
        f"{args.batch_size}, images/s (best of {args.repeats}; load average {load_average()})",
        rows,
        columns,
    )
    for backend, result in serving.items():
        figures = [(count, result[str(count)]) for count in args.clients]
        print(f"web tagger ({backend}, {len(tagger_paths)} images, loopback, best of {args.repeats}): " + "; ".join(
            f"{count} client(s) {run['requests_per_s']:.2f} req/s, p50 {run['p50_s']:.2f} s, p95 {run['p95_s']:.2f} s"
            for count, run in figures
        ))  # fmt: skip
    payload = {
        "benchmark": "tagging",
        "config": vars(args),
        "model": model_folder,
        "images": folder,
        "num_images": len(paths),
        "image_size": list(args.photo_size),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu": platform.processor()},
        "decode_only": decode,
        "previous_path_pytorch": previous_path,
        "backends": backends,
        "tagger_images": [os.fspath(path) for path in tagger_paths],
        "tagger_load": serving,
        "load_average_end": load_average(),
    }
    print(json.dumps(payload, indent=2))
    write_json(args.json, payload)
    return payload


# --------------------------------------------------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------------------------------------------------


def run_streaming(args: argparse.Namespace) -> dict[str, object]:
    """`streaming`: resident memory over a training run that streams parquet shards (`--streaming`), sampled every
    0.2 s in a background thread: flat means the stream is read shard by shard, not gathered in memory."""
    import tempfile
    import threading
    from pathlib import Path

    import numpy as np

    from sadcl_hf.data import load_multilabel_dataset
    from sadcl_hf.data.streaming import write_parquet_shards
    from sadcl_hf.training.recipe import parse_arguments, run_training

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        shards = Path(scratch) / "shards"
        options = {"num_train": args.num_images, "num_validation": 64, "num_test": 64}
        for split, num_shards in (("train", args.num_shards), ("validation", 1)):
            write_parquet_shards(
                load_multilabel_dataset("digits-mosaic", split=split, **options), shards, split, num_shards
            )
        arguments = parse_arguments([
            "--config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "demo.yaml"),
            "--streaming", "--dataset_root", str(shards), "--stage", "baseline", "--max_steps", str(args.steps),
            "--per_device_train_batch_size", str(args.batch_size), "--output_dir", str(Path(scratch) / "run"),
            "--logging_steps", str(args.steps), "--use_ema", "false", "--disable_tqdm", "true",
        ])  # fmt: skip
        samples: list[tuple] = []
        done = threading.Event()

        def sample() -> None:
            start = time.perf_counter()
            while not done.is_set():
                samples.append((time.perf_counter() - start, current_rss_mib()))
                done.wait(0.2)

        gc.collect()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        metrics = run_training(*arguments)
        done.set()
        sampler.join()
    seconds, rss = np.array(samples).T
    train_seconds = float(metrics["train_runtime"])
    # The training steps lie between model set-up and the final evaluation; compare their first and last quarters.
    during = (seconds > seconds[-1] - train_seconds - 1.0) & (seconds < seconds[-1] - 1.0)
    steps_rss = rss[during] if during.sum() >= 8 else rss
    quarter = max(len(steps_rss) // 4, 1)
    first, last = float(np.median(steps_rss[:quarter])), float(np.median(steps_rss[-quarter:]))
    row = {
        "images_streamed": args.steps * args.batch_size,
        "passes_over_data": args.steps * args.batch_size / args.num_images,
        "shards": args.num_shards,
        "rss_first_quarter_mib": first,
        "rss_last_quarter_mib": last,
        "rss_growth_mib": last - first,
        "peak_rss_mib": float(rss.max()),
        "train_seconds": train_seconds,
    }
    print_table(
        f"streaming training, digits-mosaic parquet shards, {args.steps} steps of {args.batch_size}, RSS sampled every "
        "0.2 s (median of the first and last quarter of the training steps)",
        [row],
        list(row),
    )
    payload = {"benchmark": "streaming", "config": vars(args), **row}
    write_json(args.json, payload)
    return payload


SUBCOMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, object]]] = {
    "losses": run_losses,
    "train-step": run_train_step,
    "inference": run_inference,
    "data": run_data,
    "serving": run_serving,
    "tagging": run_tagging,
    "streaming": run_streaming,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", "--output", dest="json", metavar="FILE", default=None, help="also write the results to this JSON file"
    )
    common.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    subparsers = parser.add_subparsers(dest="command", required=True)

    losses = subparsers.add_parser("losses", parents=[common], help="SSCL + PSCL forward+backward time and memory")
    losses.add_argument("--batch-size", type=int, default=32)
    losses.add_argument("--num-labels", type=int, default=80)
    losses.add_argument("--dim", type=int, default=1024)
    losses.add_argument("--repeats", type=int, default=20)
    losses.add_argument("--baseline-repeats", type=int, default=5, help="repeats of the (slow) dense released baseline")
    losses.add_argument("--worker", choices=LOSS_VARIANTS, default=None, help=argparse.SUPPRESS)

    train_step = subparsers.add_parser("train-step", parents=[common], help="training step images/s and memory")
    train_step.add_argument("--preset", default="tiny")
    train_step.add_argument("--batch-size", type=int, default=64)
    train_step.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    train_step.add_argument("--objective", choices=("sadcl", "asl"), default="sadcl")
    train_step.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', ...")
    train_step.add_argument("--warmup", type=int, default=2)
    train_step.add_argument("--repeats", type=int, default=10)

    inference = subparsers.add_parser("inference", parents=[common], help="pipeline vs bare forward images/s")
    inference.add_argument("--preset", default="tiny")
    inference.add_argument("--batch-size", type=int, default=64)
    inference.add_argument("--source-size", type=int, default=None, help="input image side (default: image_size)")
    inference.add_argument("--device", default="auto")
    inference.add_argument("--warmup", type=int, default=2)
    inference.add_argument("--repeats", type=int, default=10)

    data = subparsers.add_parser("data", parents=[common], help="training data path images/s per worker")
    data.add_argument("--dataset", default="folder", help="a sadcl_hf.data.DATASET_NAMES entry")
    data.add_argument("--root", required=True, help="the dataset's folder")
    data.add_argument("--split", default="train")
    data.add_argument("--make-images", type=int, default=0, metavar="N", help="first write N 640x480 JPEGs to --root")
    data.add_argument("--image-size", type=int, default=448)
    data.add_argument("--batch-size", type=int, default=32)
    data.add_argument("--batches", type=int, default=10, help="timed batches (after one warm-up batch)")
    data.add_argument("--randaugment", action="store_true")
    data.add_argument("--cutout", action="store_true")

    serving = subparsers.add_parser("serving", parents=[common], help="PyTorch eager vs ONNX Runtime fp32 / int8")
    serving.add_argument("--model", required=True, help="a saved model folder (its onnx/ files are made if missing)")
    serving.add_argument("--batch-size", type=int, default=64)
    serving.add_argument("--warmup", type=int, default=2)
    serving.add_argument("--min-seconds", type=float, default=10.0, help="time each batch size at least this long")
    serving.add_argument(
        "--profile", action="store_true",
        help="also time eager without inference_mode and channels-last, ONNX Runtime with the settings it does not "
        "use by default, and ONNX Runtime's time by operator",
    )  # fmt: skip

    tagging = subparsers.add_parser(
        "tagging", parents=[common], help="predict.py's path on 12 MP JPEGs vs its decode and model limits; tagger load"
    )
    tagging.add_argument("--model", default=None, help="model folder (default: runs/demo/model, else a demo-sized one)")
    tagging.add_argument("--num-images", type=int, default=32, help="12 MP JPEGs to tag")
    tagging.add_argument("--seed", type=int, default=0, help="seed of the generated JPEGs")
    tagging.add_argument(
        "--photo-size", type=image_size_argument, default=PHONE_PHOTO_SIZE, metavar="WxH",
        help="size of the generated JPEGs (default 4032x3024, a 12 MP phone photo)",
    )  # fmt: skip
    tagging.add_argument(
        "--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "sadcl_hf", "benchmark"),
        help="where the JPEGs (and the demo-sized model, when built) are written once",
    )  # fmt: skip
    tagging.add_argument("--batch-size", type=int, default=16)
    tagging.add_argument("--num-workers", type=int, default=2, help="predict.py --num-workers (also timed with 0)")
    tagging.add_argument("--backends", nargs="+", choices=TAGGING_BACKENDS, default=list(TAGGING_BACKENDS))
    tagging.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the best is reported")
    tagging.add_argument(
        "--clients", type=int, nargs="*", default=[1, 16], help="concurrent tagger clients (none: skip the tagger)"
    )
    tagging.add_argument("--serving-backends", nargs="+", choices=TAGGING_BACKENDS, default=["pytorch"])
    tagging.add_argument("--max-batch-size", type=int, default=16, help="the tagger's --max-batch-size")
    tagging.add_argument(
        "--tagger-images",
        default=None,
        help="folder or file of the images the tagger's clients upload (default: the generated JPEGs)",
    )
    tagging.add_argument(
        "--tagger-requests", type=int, default=160,
        help="requests per run at each number of clients (at least 8 per client)",
    )  # fmt: skip
    tagging.add_argument(
        "--unbatched-baseline", action="store_true",
        help="also time the tagger with --max-batch-size 1 (no request batching) at the same numbers of clients",
    )  # fmt: skip

    streaming = subparsers.add_parser("streaming", parents=[common], help="RSS over a streamed training run")
    streaming.add_argument("--num-images", type=int, default=4000, help="digits-mosaic training images in the shards")
    streaming.add_argument("--num-shards", type=int, default=8)
    streaming.add_argument("--steps", type=int, default=300)
    streaming.add_argument("--batch-size", type=int, default=32)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    SUBCOMMANDS[args.command](args)


if __name__ == "__main__":
    from sadcl_hf.cli import run_script  # sadcl_hf is imported where each benchmark needs it

    run_script(main)
