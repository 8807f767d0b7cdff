import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from sadcl_hf.hub.push import stage_model_folder
from sadcl_hf.model_card import model_card_data_of, record_training_summary
from sadcl_hf.training.arguments import ModelArguments, SADCLTrainingArguments
from sadcl_hf.training.recipe import build_model, parse_arguments, run_training
from sadcl_hf.training.trainer import SADCLTrainer

from .conftest import make_tiny_model

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


def test_unknown_fields_and_bad_values_are_reported(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("learning_rte: 0.1\n")
    with pytest.raises(SystemExit, match="learning_rte"):
        parse_arguments(["--config", str(config)])
    with pytest.raises(SystemExit, match="--not_an_option"):
        parse_arguments(["--output_dir", str(tmp_path), "--not_an_option", "3"])
    with pytest.raises(SystemExit):  # argparse's choices: the error names the option and lists the stages
        parse_arguments(["--output_dir", str(tmp_path), "--stage", "stage3"])
    error = capsys.readouterr().err
    assert "argument --stage: invalid choice: 'stage3' (choose from 'baseline', 'sadcl', 'single')" in error
    with pytest.raises(SystemExit, match="no such file"):
        parse_arguments(["--config", str(tmp_path / "missing.yaml")])


def test_mapping_arguments_from_the_file_and_the_command_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"config_overrides": {"dropout": 0.0}, "dataset_options": {"num_train": 8}}))
    model_args, data_args, _ = parse_arguments(["--config", str(config), "--output_dir", str(tmp_path)])
    assert model_args.config_overrides == {"dropout": 0.0} and data_args.dataset_options == {"num_train": 8}
    model_args, _, _ = parse_arguments(["--output_dir", str(tmp_path), "--config_overrides", '{"dropout": 0.5}'])
    assert model_args.config_overrides == {"dropout": 0.5}
    with pytest.raises(ValueError, match="--config_overrides: expected a JSON object"):
        parse_arguments(["--output_dir", str(tmp_path), "--config_overrides", "dropout=0"])
    with pytest.raises(ValueError, match="--dataset_options: expected a JSON object"):
        parse_arguments(["--output_dir", str(tmp_path), "--dataset_options", "[1, 2]"])


def test_saved_model_ignores_use_pretrained_backbone_and_refuses_architecture_changes(tmp_path):
    make_tiny_model().save_pretrained(tmp_path / "stage1")
    names = [f"class_{i}" for i in range(5)]
    arguments = dict(stage="sadcl", model_name_or_path=str(tmp_path / "stage1"), use_pretrained_backbone=True)
    model = build_model(ModelArguments(**arguments), names)
    assert model.config.use_pretrained_backbone is False and model.config.objective == "sadcl"
    with pytest.raises(ValueError, match="cannot change image_size"):
        build_model(ModelArguments(**arguments, image_size=96), names)


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
    processor = AutoImageProcessor.from_pretrained(stage1 / "model")
    assert processor.size == {"height": 64, "width": 64}
    backbone_cfg = timm.get_pretrained_cfg(model.config.backbone)  # the normalisation is the backbone's
    assert processor.image_mean == pytest.approx(backbone_cfg.mean)
    assert processor.image_std == pytest.approx(backbone_cfg.std)

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
    # the run's results (the exported EMA's, not stage 1's) are in the card data beside the model, not in its config
    assert "training_summary" not in json.loads((stage2 / "model" / "config.json").read_text())
    card_data = model_card_data_of(final)
    assert [card_data.dataset_name, card_data.stage, card_data.eval_split] == ["digits-mosaic", "sadcl", "validation"]
    ema_decay = yaml.safe_load(DEMO_CONFIG.read_text())["ema_decay"]
    assert card_data.uses_ema_weights and card_data.ema_decay == pytest.approx(ema_decay)
    assert card_data.results["map"] == pytest.approx(metrics["eval_ema_map"])
    assert card_data.metrics["map"] == pytest.approx(metrics["eval_map"]) and card_data.global_step == 2
    assert card_data.hyperparameters["max_steps"] == "2"
    card = ModelCard.load(stage2 / "model" / "README.md")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["map"] == round(metrics["eval_ema_map"], 2)
    assert f"exponential moving average of the trained\nweights (decay {ema_decay})" in card.text
    assert "Optimisation steps: 2" in card.text and "| max_steps | 2 |" in card.text
    # pushing the folder publishes that card (scripts/push_to_hub.py stages it for the repository)
    stage_model_folder(stage2 / "model", tmp_path / "staged", "tester/sadcl-digits")
    staged = ModelCard.load(tmp_path / "staged" / "README.md")
    assert staged.data.model_name == "tester/sadcl-digits" and staged.data.eval_results == card.data.eval_results
    assert "training_summary" not in json.loads((tmp_path / "staged" / "config.json").read_text())


def test_stage_sadcl_without_stage_one_model_is_explained(tmp_path, data_options):
    with pytest.raises(ValueError, match="--stage single"):
        _train(tmp_path, data_options, "--stage", "sadcl", "--max_steps", "1")


def test_resumed_run_ends_with_the_same_weights(tmp_path, data_options):
    """Resuming mid-epoch (step 3 of 6 per epoch) restores weights, EMA, memory bank and the data order."""
    deterministic = [
        "--stage", "single", "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "3",
        "--resize_margin", "0", "--crop_scales", "1.0", "--config_overrides", json.dumps({"dropout": 0.0}),
        "--seed", "7",
    ]  # fmt: skip
    _train(tmp_path / "full", data_options, *deterministic)
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert (checkpoint / "ema.safetensors").is_file()
    assert (checkpoint / "memory_bank-rank0.safetensors").is_file()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["epoch"] == 0.5
    _train(tmp_path / "resumed", data_options, *deterministic, "--resume_from_checkpoint", str(checkpoint))
    for name in ("model.safetensors", "ema.safetensors", "memory_bank-rank0.safetensors"):
        full = load_file(tmp_path / "full" / "checkpoint-6" / name)
        resumed = load_file(tmp_path / "resumed" / "checkpoint-6" / name)
        assert full.keys() == resumed.keys()
        for key in full:
            torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")


def test_out_of_memory_settings_bf16_smaller_backbone_and_images(tmp_path, data_options):
    """The README's out-of-memory advice: bf16 (CPU autocast here), another timm backbone, a smaller image size."""
    metrics = _train(
        tmp_path, data_options, "--stage", "single", "--max_steps", "2", "--bf16", "--no_use_ema",
        "--backbone", "mobilenetv3_small_050", "--image_size", "32",
    )  # fmt: skip
    log = [entry for entry in json.loads((tmp_path / "train_log.json").read_text()) if "loss" in entry]
    assert len(log) == 2
    assert all(math.isfinite(entry[name]) for entry in log for name in ("loss", "asl", "sscl", "pscl"))
    assert "eval_ema_map" not in metrics and math.isfinite(metrics["eval_map"])
    weights = load_file(tmp_path / "model" / "model.safetensors")  # autocast: the weights stay float32
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "model")
    assert (model.config.backbone, model.config.image_size) == ("mobilenetv3_small_050", 32)
    assert AutoImageProcessor.from_pretrained(tmp_path / "model").size == {"height": 32, "width": 32}
    assert {value.dtype for value in weights.values() if value.is_floating_point()} == {torch.float32}


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
    """`load_best_model_at_end` with `save_total_limit`: the best and the last checkpoint stay on disk and the
    exported model is the best checkpoint's EMA."""
    _train(
        tmp_path, data_options, "--stage", "baseline", "--max_steps", "6", "--eval_strategy", "steps",
        "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2", "--load_best_model_at_end",
        "--metric_for_best_model", "eval_ema_map", "--early_stopping_patience", "5", "--save_total_limit", "1",
    )  # fmt: skip
    state = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())
    best = Path(state["best_model_checkpoint"])
    assert len([entry for entry in state["log_history"] if "eval_ema_map" in entry]) == 3
    assert {path.name for path in tmp_path.glob("checkpoint-*")} == {best.name, "checkpoint-6"}
    best_ema = load_file(best / "ema.safetensors")
    exported = load_file(tmp_path / "model" / "model.safetensors")
    for key, value in exported.items():
        torch.testing.assert_close(value, best_ema[key], rtol=0, atol=0, msg=key)


def test_compute_prototypes_script(tmp_path, data_options):
    from sadcl_hf.training.prototypes import load_prototypes

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
    from sadcl_hf.image_processing import eval_collator_for_config
    from sadcl_hf.training.prototypes import compute_prototypes

    train = load_multilabel_dataset("digits-mosaic", split="train", **data_options)
    loader = torch.utils.data.DataLoader(train, batch_size=16, collate_fn=eval_collator_for_config(model.config))
    expected, counts = compute_prototypes(model, loader, threshold=0.0, progress_bar=False)
    assert counts.sum() > 0
    torch.testing.assert_close(prototypes, expected, rtol=1e-5, atol=1e-5)


class _RandomImages(torch.utils.data.Dataset):
    """`num_images` random 64 px images with fixed multi-hot labels (no decoding, no augmentation)."""

    def __init__(self, num_images: int, num_labels: int = 5, seed: int = 0, dtype=torch.float32):
        generator = torch.Generator().manual_seed(seed)
        self.pixel_values = torch.randn(num_images, 3, 64, 64, generator=generator).to(dtype)
        self.labels = (torch.rand(num_images, num_labels, generator=generator) < 0.5).to(dtype)
        self.labels[:, 0] = 1  # every image has a positive

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


_QUIET_TRAINING = {
    "report_to": [], "dataloader_num_workers": 0, "dataloader_pin_memory": False, "logging_steps": 1,
    "save_strategy": "no", "seed": 0, "disable_tqdm": True,
}  # fmt: skip


def _trainer_arguments(output_dir, **overrides) -> SADCLTrainingArguments:
    return SADCLTrainingArguments(**{**_QUIET_TRAINING, "output_dir": str(output_dir), "use_ema": False, **overrides})


class _MicroBatchRecorder(SADCLTrainer):
    """Records each training micro-batch's loss and components, and the memory bank before and after it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.micro_batches = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        bank_before = model.memory_bank.clone()
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
        if model.training:
            components = {name: value.item() for name, value in outputs["loss_terms"].items()}
            banks = {"bank_before": bank_before, "bank_after": model.memory_bank.clone()}
            self.micro_batches.append({"loss": loss.item(), **components, **banks})
        return (loss, outputs) if return_outputs else loss


def _sgd_step(output_dir, trainer_class, batch_size, accumulation_steps):
    """One plain SGD step (lr 1, no weight decay, momentum or clipping) in float64: returns (gradient by parameter
    name, the first logged loss)."""
    model = make_tiny_model(objective="asl", dropout=0.0, freeze_backbone_batch_norm=True).double()
    arguments = {
        **_QUIET_TRAINING, "output_dir": str(output_dir), "max_steps": 1, "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": accumulation_steps, "optim": "sgd", "learning_rate": 1.0,
        "weight_decay": 0.0, "max_grad_norm": 0.0, "lr_scheduler_type": "constant",
    }  # fmt: skip
    if trainer_class is SADCLTrainer:
        args = SADCLTrainingArguments(**arguments, use_ema=False, lr_schedule="trainer")
    else:
        args = TrainingArguments(**arguments)
    trainer = trainer_class(model=model, args=args, train_dataset=_RandomImages(4, dtype=torch.float64))
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    trainer.train()
    gradients = {name: before[name] - param.detach() for name, param in model.named_parameters()}
    return gradients, next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)


@pytest.mark.parametrize("trainer_class", [SADCLTrainer, Trainer], ids=["SADCLTrainer", "transformers.Trainer"])
def test_gradient_accumulation_averages_like_the_full_batch(tmp_path, trainer_class):
    """Objective `asl`: batch 4 and 2 micro-batches of 2 give the same gradients and the same logged loss."""
    full, full_loss = _sgd_step(tmp_path / "full", trainer_class, batch_size=4, accumulation_steps=1)
    accumulated, accumulated_loss = _sgd_step(tmp_path / "accumulated", trainer_class, 2, accumulation_steps=2)
    assert any(gradient.abs().max() > 1e-3 for gradient in full.values())
    for name, gradient in full.items():
        torch.testing.assert_close(accumulated[name], gradient, rtol=0, atol=1e-6, msg=name)
    assert accumulated_loss == pytest.approx(full_loss, rel=1e-6)


def test_gradient_accumulation_logs_the_mean_of_the_micro_batches(tmp_path):
    """Objective `sadcl`: the logged loss and components are the mean over the micro-batches, not their sum; the
    memory bank has one row per micro-batch sample and each micro-batch reads what the previous one wrote."""
    model = make_tiny_model(dropout=0.0, memory_bank_threshold=0.0)
    args = _trainer_arguments(
        tmp_path, max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-4
    )
    trainer = _MicroBatchRecorder(model=model, args=args, train_dataset=_RandomImages(8))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and len(trainer.micro_batches) == 4
    for step, log in enumerate(logs):
        micro_batches = trainer.micro_batches[2 * step : 2 * step + 2]
        for name in ("loss", "asl", "sscl", "pscl"):
            values = [micro_batch[name] for micro_batch in micro_batches]
            assert log[name] == pytest.approx(sum(values) / 2, rel=1e-4, abs=1e-4), (step, name)
        assert log["loss"] < sum(micro_batch["loss"] for micro_batch in micro_batches) * 0.9
    for previous, current in zip(trainer.micro_batches, trainer.micro_batches[1:]):
        assert current["bank_before"].shape == (2, 5, 128)
        assert torch.equal(current["bank_before"], previous["bank_after"])
        assert not torch.equal(current["bank_after"], current["bank_before"])


def _sadcl_model_with_bank_threshold_zero():
    """Tiny `sadcl` model whose memory bank takes every positive feature (no confidence needed)."""
    return make_tiny_model(dropout=0.0, memory_bank_threshold=0.0)


@pytest.mark.parametrize("eval_batch_size", [8, 2], ids=["eval-batch-larger", "eval-batch-smaller"])
def test_evaluation_leaves_the_memory_bank_untouched(tmp_path, eval_batch_size):
    model = _sadcl_model_with_bank_threshold_zero()
    args = _trainer_arguments(
        tmp_path, max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=eval_batch_size,
        use_ema=True, ema_decay=0.5,
    )  # fmt: skip
    train, evaluation = _RandomImages(8), _RandomImages(8, seed=1)
    trainer = SADCLTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation)
    trainer.train()
    bank = model.memory_bank.clone()
    assert bank.shape == (4, 5, 128)
    assert not torch.equal(bank, model.prototypes.detach().float().expand_as(bank))  # filled by training
    ema_bank = trainer.ema.module.memory_bank.clone()
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"]) and math.isfinite(metrics["eval_ema_loss"])
    assert torch.equal(model.memory_bank, bank)
    assert torch.equal(trainer.ema.module.memory_bank, ema_bank)


def test_two_epochs_with_evaluation_each_epoch_keep_the_memory_bank(tmp_path):
    """configs/coco2014-r101-448.yaml's pattern: evaluation every epoch at twice the training batch."""
    model = _sadcl_model_with_bank_threshold_zero()
    args = _trainer_arguments(
        tmp_path, num_train_epochs=2, per_device_train_batch_size=4, per_device_eval_batch_size=8,
        eval_strategy="epoch",
    )  # fmt: skip
    recorder = _BankRecorder(model)
    trainer = SADCLTrainer(
        model=model, args=args, train_dataset=_RandomImages(8), eval_dataset=_RandomImages(8, seed=1),
        callbacks=[recorder],
    )  # fmt: skip
    trainer.train()
    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert [entry["epoch"] for entry in evaluations] == [1.0, 2.0] and trainer.state.global_step == 4
    # every evaluation found the bank the last training step left, and left it as it was
    assert len(recorder.before_evaluation) == 2
    for before, after in zip(recorder.before_evaluation, recorder.after_evaluation):
        assert torch.equal(before, after)
    bank = model.memory_bank
    assert bank.shape == (4, 5, 128)
    assert not torch.allclose(bank, model.prototypes.detach().float().expand_as(bank))


class _BankRecorder(TrainerCallback):
    """Copies of the memory bank at the end of each epoch's training steps and after each evaluation."""

    def __init__(self, model):
        self.model = model
        self.before_evaluation, self.after_evaluation = [], []

    def on_epoch_end(self, args, state, control, **kwargs):
        self.before_evaluation.append(self.model.memory_bank.clone())

    def on_evaluate(self, args, state, control, **kwargs):
        self.after_evaluation.append(self.model.memory_bank.clone())


def test_short_runs_warm_up_the_learning_rate_and_the_ema(tmp_path):
    """The one-cycle schedule ramps the learning rate up first; in a short run the EMA at decay 0.9998 lags far behind
    the weights, and `ema_warmup` makes it follow them."""
    ema_lags = {}
    for ema_warmup in (False, True):
        model = make_tiny_model(objective="asl", dropout=0.0)
        initial = {name: value.clone() for name, value in model.state_dict().items()}
        args = _trainer_arguments(
            tmp_path / str(ema_warmup), max_steps=6, per_device_train_batch_size=2, learning_rate=1e-3,
            one_cycle_pct_start=0.5, use_ema=True, ema_warmup=ema_warmup,
        )  # fmt: skip
        trainer = SADCLTrainer(model=model, args=args, train_dataset=_RandomImages(12))
        trainer.train()
        rates = [entry["learning_rate"] for entry in trainer.state.log_history if "loss" in entry]
        assert rates[0] < rates[1] < rates[2] and rates[-1] < max(rates) / 10  # up, then annealed
        ema, trained = trainer.ema.module.state_dict(), model.state_dict()
        keys = [key for key, value in trained.items() if value.is_floating_point()]
        moved = sum((trained[key] - initial[key]).norm() for key in keys)
        ema_lags[ema_warmup] = (sum((ema[key] - trained[key]).norm() for key in keys) / moved).item()
    assert ema_lags[False] > 0.5 and ema_lags[True] < ema_lags[False] / 2


def test_trainer_card_describes_this_run(tmp_path):
    """Training drops the results a loaded model recorded; the trainer's card shows its own latest evaluation and
    needs the evaluation dataset's name for the model-index."""
    model = make_tiny_model(objective="asl")
    record_training_summary(model, {"map": 99.0}, "coco2014", stage="baseline")
    trainer = SADCLTrainer(
        model=model, args=_trainer_arguments(tmp_path, max_steps=1, per_device_train_batch_size=4),
        train_dataset=_RandomImages(4), eval_dataset=_RandomImages(4, seed=1),
    )  # fmt: skip
    trainer.train()
    assert model.model_card_data.stage is None and model.model_card_data.dataset_name is None
    assert model.model_card_data.metrics == {} and "training_summary" not in model.config.to_dict()
    metrics = trainer.evaluate()
    with pytest.raises(ValueError, match="dataset="):
        trainer.create_model_card()
    trainer.create_model_card(dataset="voc2007")
    card = ModelCard.load(tmp_path / "README.md")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["map"] == round(metrics["eval_map"], 2) and card.data.datasets == ["voc2007"]
    assert "Recipe stage" not in card.text
