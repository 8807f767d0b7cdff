"""What a user sees from the scripts (issue 20): `train.py --help` shows the presets and the SADCL options first; a
training run prints each metric line once and no warning the user cannot act on; the int8 export is quiet."""

import json
import os
import re
import subprocess
import sys

from sadcl_hf.image_processing import image_processor_for_config

from .conftest import PROJECT_ROOT, make_tiny_model, run_script

SMALL_DIGITS = {"num_train": 64, "num_validation": 32, "num_test": 32}


def test_train_help_lists_the_presets_and_the_sadcl_options_before_the_trainer_ones():
    result = run_script("train", ["--help"])
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "--preset {paper-r101-448,paper-r101-576,tiny}" in text
    assert "--stage {baseline,sadcl,single}" in text
    sections = [text.index(f"\n{title}:\n") for title in ("SADCL model", "data", "SADCL training")]
    trainer_section = text.index("\ntransformers.TrainingArguments:\n")
    assert sections == sorted(sections) and sections[-1] < trainer_section
    sadcl_training = text[sections[-1] : trainer_section]
    for option in ("--use_ema", "--lr_schedule", "--backbone_learning_rate", "--online_prototype_steps"):
        assert option in sadcl_training
    assert "--use_ema" not in text[trainer_section:]


def _lines(output: str) -> list[str]:
    """The lines of a console output; tqdm redraws its bar with carriage returns."""
    return [line.strip() for line in re.split(r"[\r\n]", output) if line.strip()]


def test_training_prints_each_metric_line_once_and_no_pin_memory_warning(tmp_path):
    """Tiny preset, 4 steps, evaluation every 2 steps (so the last one is at the final step), on the CPU without
    `--use_cpu`: a machine without an accelerator, where `pin_memory` has nothing to pin for."""
    output_dir = tmp_path / "run"
    options = {**SMALL_DIGITS, "cache_dir": str(tmp_path / "cache")}
    command = [
        sys.executable, str(PROJECT_ROOT / "scripts" / "train.py"), "--config", "configs/demo.yaml",
        "--use_cpu", "false", "--max_steps", "4", "--per_device_train_batch_size", "8",
        "--eval_strategy", "steps", "--eval_steps", "2", "--logging_steps", "2",
        "--output_dir", str(output_dir), "--dataset_options", json.dumps(options),
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONWARNINGS": "always", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    console = _lines(result.stdout + result.stderr)

    assert not [line for line in console if "pin_memory" in line]
    # Two training logs (steps 2 and 4), two evaluations of the raw and of the EMA weights (steps 2 and 4; the
    # final evaluation is the step-4 one, not run again): each printed once.
    assert len([line for line in console if "'loss'" in line or '"loss"' in line]) == 2
    assert len([line for line in console if "eval_map" in line]) == 2
    assert len([line for line in console if "eval_ema_map" in line]) == 2
    logged = [line for line in console if " INFO " in line or " WARNING " in line]
    assert len(logged) == len(set(logged)), logged
    assert f"metrics: {output_dir / 'all_results.json'}" in result.stdout

    train_log = (output_dir / "train.log").read_text()
    assert train_log.count('"eval_map"') == 2 and train_log.count('"loss"') == 2
    results = json.loads((output_dir / "all_results.json").read_text())
    assert {"eval_map", "eval_ema_map", "train_loss"} <= set(results)


def test_int8_export_prints_no_axis_out_of_range_warnings(tmp_path):
    """onnxruntime looked for the LayerNorm scales' channels on axis 1 and warned once per LayerNorm."""
    model_dir = tmp_path / "model"
    model = make_tiny_model(num_labels=10)
    model.config.id2label = {index: str(index) for index in range(10)}
    model.config.label2id = {str(index): index for index in range(10)}
    model.save_pretrained(model_dir)
    image_processor_for_config(model.config).save_pretrained(model_dir)
    options = {**SMALL_DIGITS, "cache_dir": str(tmp_path / "cache")}
    result = run_script("export_onnx", [
        model_dir, "--quantize", "int8", "--calibration-dataset", "digits-mosaic", "--calibration-split",
        "validation", "--calibration-samples", "16", "--dataset-options", json.dumps(options),
    ])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (model_dir / "onnx" / "model_quantized.onnx").is_file()
    assert "out-of-range" not in result.stdout + result.stderr
    assert not [line for line in _lines(result.stderr) if line.startswith("WARNING:root:")]
