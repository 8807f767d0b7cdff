import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForImageClassification

from sadcl_hf.training import parse_arguments, run_training

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def data_options(tmp_path_factory):
    cache = tmp_path_factory.mktemp("digits_cache")
    return {"num_train": 48, "num_validation": 16, "num_test": 16, "cache_dir": str(cache)}


def _arguments(output_dir, data_options, *extra):
    return [
        "--config", str(DEMO_CONFIG),
        "--output_dir", str(output_dir),
        "--dataset_options", json.dumps(data_options),
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16",
        "--logging_steps", "1",
        "--dataloader_num_workers", "0",
        *extra,
    ]  # fmt: skip


def _train(output_dir, data_options, *extra):
    return run_training(*parse_arguments(_arguments(output_dir, data_options, *extra)))


def test_config_file_values_and_command_line_precedence(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"learning_rate": 1.0e-3, "max_steps": 5, "stage": "baseline", "preset": "tiny"}))
    model_args, data_args, training_args = parse_arguments(
        ["--config", str(config), "--max_steps", "7", "--output_dir", str(tmp_path)]
    )
    assert training_args.max_steps == 7  # the command line wins
    assert training_args.learning_rate == pytest.approx(1e-3)  # from the file
    assert model_args.stage == "baseline" and model_args.preset == "tiny"
    assert data_args.dataset == "digits-mosaic"
    # the paper's optimisation defaults
    defaults = parse_arguments(["--output_dir", str(tmp_path)])[2]
    assert (defaults.learning_rate, defaults.weight_decay, defaults.lr_schedule) == (5e-5, 5e-3, "one_cycle")
    assert defaults.ema_decay == 0.9998 and defaults.use_ema


def test_unknown_fields_and_bad_values_are_reported(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("learning_rte: 0.1\n")
    with pytest.raises(SystemExit, match="learning_rte"):
        parse_arguments(["--config", str(config)])
    with pytest.raises(SystemExit, match="--not_an_option"):
        parse_arguments(["--output_dir", str(tmp_path), "--not_an_option", "3"])
    with pytest.raises(ValueError, match="--stage"):
        parse_arguments(["--output_dir", str(tmp_path), "--stage", "stage3"])
    with pytest.raises(SystemExit, match="no such file"):
        parse_arguments(["--config", str(tmp_path / "missing.yaml")])


def test_missing_dataset_root_names_it(tmp_path):
    arguments = parse_arguments(
        ["--config", str(DEMO_CONFIG), "--dataset", "coco2014", "--dataset_root", str(tmp_path / "no-coco"),
         "--output_dir", str(tmp_path / "out")]
    )  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no-coco"):
        run_training(*arguments)


def test_two_stage_recipe_end_to_end(tmp_path, data_options):
    stage1 = tmp_path / "stage1"
    metrics = _train(stage1, data_options, "--stage", "baseline", "--max_steps", "3")
    for key in ("eval_map", "eval_cf1", "eval_of1_top3", "eval_ema_map", "eval_ema_cf1"):
        assert key in metrics and math.isfinite(metrics[key])
    assert json.loads((stage1 / "all_results.json").read_text())["eval_map"] == pytest.approx(metrics["eval_map"])
    log = json.loads((stage1 / "train_log.json").read_text())
    steps = [entry for entry in log if "loss" in entry]
    assert len(steps) == 3 and all("asl" in entry and "sscl" not in entry for entry in steps)
    assert (stage1 / "train.log").stat().st_size > 0

    model = AutoModelForImageClassification.from_pretrained(stage1 / "model")
    assert model.config.label_names == [str(i) for i in range(10)]
    assert model.config.objective == "asl"
    assert AutoImageProcessor.from_pretrained(stage1 / "model").size == {"height": 64, "width": 64}

    stage2 = tmp_path / "stage2"
    metrics = _train(
        stage2, data_options, "--stage", "sadcl", "--model_name_or_path", str(stage1 / "model"), "--max_steps", "2"
    )
    assert math.isfinite(metrics["eval_ema_map"])
    prototypes = load_file(stage2 / "prototypes.safetensors")
    assert next(iter(prototypes.values())).shape == (10, 128)
    log = json.loads((stage2 / "train_log.json").read_text())
    assert all({"asl", "sscl", "pscl"} <= set(entry) for entry in log if "loss" in entry)
    final = AutoModelForImageClassification.from_pretrained(stage2 / "model")
    assert final.config.objective == "sadcl"


def test_stage_sadcl_without_stage_one_model_is_explained(tmp_path, data_options):
    with pytest.raises(ValueError, match="--stage single"):
        _train(tmp_path, data_options, "--stage", "sadcl", "--max_steps", "1")


def test_resumed_run_ends_with_the_same_weights(tmp_path, data_options):
    deterministic = [
        "--stage", "single", "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "3",
        "--resize_margin", "0", "--crop_scales", "1.0", "--config_overrides", json.dumps({"dropout": 0.0}),
        "--seed", "7",
    ]  # fmt: skip
    _train(tmp_path / "full", data_options, *deterministic)
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert (checkpoint / "ema.safetensors").is_file()
    assert (checkpoint / "memory_bank-rank0.safetensors").is_file()
    _train(tmp_path / "resumed", data_options, *deterministic, "--resume_from_checkpoint", str(checkpoint))
    for name in ("model.safetensors", "ema.safetensors", "memory_bank-rank0.safetensors"):
        full = load_file(tmp_path / "full" / "checkpoint-6" / name)
        resumed = load_file(tmp_path / "resumed" / "checkpoint-6" / name)
        assert full.keys() == resumed.keys()
        for key in full:
            torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")


def test_bf16_autocast_on_cpu(tmp_path, data_options):
    metrics = _train(tmp_path, data_options, "--stage", "single", "--max_steps", "2", "--bf16", "--no_use_ema")
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert all(math.isfinite(entry["loss"]) for entry in log if "loss" in entry)
    assert "eval_ema_map" not in metrics and math.isfinite(metrics["eval_map"])


def test_accelerate_launch_two_processes_stay_in_sync(tmp_path, data_options):
    """Two gloo ranks, contrastive features gathered across them, memory banks kept per rank."""
    accelerate = Path(sys.executable).with_name("accelerate")
    overrides = {"memory_bank_threshold": 0.0, "gather_contrastive_features": True}
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", str(ROOT / "scripts" / "train.py"),
        *_arguments(tmp_path, data_options, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "4",
                    "--config_overrides", json.dumps(overrides)),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "weights identical on all 2 processes" in output
    checkpoint = tmp_path / "checkpoint-4"
    banks = [load_file(checkpoint / f"memory_bank-rank{rank}.safetensors")["memory_bank"] for rank in (0, 1)]
    assert banks[0].shape == banks[1].shape == (8, 10, 128)
    assert not torch.equal(banks[0], banks[1])  # each process keeps its own memory bank (its own samples)
    assert json.loads((tmp_path / "all_results.json").read_text())["eval_map"] >= 0


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_shipped_configs_parse(config, tmp_path):
    model_args, data_args, training_args = parse_arguments(["--config", str(config), "--output_dir", str(tmp_path)])
    assert model_args.stage in ("baseline", "sadcl", "single")
    assert data_args.dataset in ("digits-mosaic", "coco2014", "voc2007", "nuswide", "vg500")
    if config.name != "demo.yaml":
        assert model_args.preset.startswith("paper-r101") and model_args.use_pretrained_backbone
        assert training_args.ema_decay == 0.9998 and training_args.learning_rate == pytest.approx(5e-5)
        assert training_args.metric_for_best_model == "eval_ema_map" and training_args.early_stopping_patience


def test_early_stopping_needs_a_metric(tmp_path):
    with pytest.raises(ValueError, match="early_stopping_patience"):
        parse_arguments(["--output_dir", str(tmp_path), "--early_stopping_patience", "2"])


def test_best_checkpoint_and_its_ema_are_exported(tmp_path, data_options):
    _train(
        tmp_path, data_options, "--stage", "baseline", "--max_steps", "6", "--eval_strategy", "steps",
        "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2", "--load_best_model_at_end",
        "--metric_for_best_model", "eval_ema_map", "--early_stopping_patience", "5",
    )  # fmt: skip
    state = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())
    best = Path(state["best_model_checkpoint"])
    best_ema = load_file(best / "ema.safetensors")
    exported = load_file(tmp_path / "model" / "model.safetensors")
    for key, value in exported.items():
        torch.testing.assert_close(value, best_ema[key], rtol=0, atol=0, msg=key)


def test_compute_prototypes_script(tmp_path, data_options):
    from sadcl_hf.prototypes import load_prototypes

    from .conftest import make_tiny_model

    model = make_tiny_model(num_labels=10)
    model.config.id2label = {i: str(i) for i in range(10)}
    model.config.label2id = {str(i): i for i in range(10)}
    model.save_pretrained(tmp_path / "stage1")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"dataset": "digits-mosaic", "dataset_options": data_options}))
    output = tmp_path / "prototypes.safetensors"
    command = [
        sys.executable, str(ROOT / "scripts" / "compute_prototypes.py"), "--model", str(tmp_path / "stage1"),
        "--config", str(config), "--output", str(output), "--threshold", "0.0", "--batch-size", "16",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    prototypes = load_prototypes(output, num_labels=10, hidden_dim=128)
    assert "images per class" in result.stdout
    # the same as the function on the same data: the mean label feature over each class's positive images
    from sadcl_hf.data import load_multilabel_dataset
    from sadcl_hf.prototypes import compute_prototypes
    from sadcl_hf.training import eval_collator_for_config

    train = load_multilabel_dataset("digits-mosaic", split="train", **data_options)
    loader = torch.utils.data.DataLoader(train, batch_size=16, collate_fn=eval_collator_for_config(model.config))
    expected, counts = compute_prototypes(model, loader, threshold=0.0, progress_bar=False)
    assert counts.sum() > 0
    torch.testing.assert_close(prototypes, expected, rtol=1e-5, atol=1e-5)
