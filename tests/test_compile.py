"""GPU-ready training paths, checked on the CPU: `torch.compile` of the model and of a training step, channels-last
backbone, and `--torch_compile` through the training entry point with the SADCL objective.

Inductor's C++ code generation takes minutes on a loaded 2-core CPU, so the tests compile with the `aot_eager`
backend: the same Dynamo capture and AOTAutograd joint graph that inductor lowers, run with eager kernels.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sadcl_hf.training.recipe import parse_arguments, run_training

from .conftest import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _batch(num_labels: int = 4, size: int = 32):
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(4, 3, size, size, generator=generator)
    labels = (torch.rand(4, num_labels, generator=generator) < 0.5).float()
    labels[:, 0] = 1.0  # every class-0 feature is positive: SSCL and PSCL have anchors
    return pixel_values, labels


def test_compiled_training_step_matches_eager():
    """One SADCL training forward + backward: same logits, loss and gradients compiled and eager."""
    pixel_values, labels = _batch()
    results = []
    for compile_model in (False, True):
        model = make_tiny_model(num_labels=4, seed=3, image_size=32, dropout=0.0).train()
        run = torch.compile(model, backend="aot_eager") if compile_model else model
        output = run(pixel_values, labels=labels)
        output.loss.backward()
        gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((output.logits.detach(), output.loss.detach(), gradients, model.memory_bank.clone()))
    (eager_logits, eager_loss, eager_grads, eager_bank), (logits, loss, grads, bank) = results
    torch.testing.assert_close(logits, eager_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == eager_grads.keys() and len(grads) > 20
    for name, gradient in grads.items():
        torch.testing.assert_close(gradient, eager_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(bank, eager_bank)  # the memory-bank update (a buffer mutation) is kept


def test_channels_last_backbone_gives_the_same_logits():
    model = make_tiny_model(num_labels=4, seed=4, image_size=32).eval()
    pixel_values, _ = _batch()
    with torch.no_grad():
        expected = model(pixel_values).logits
        model.sadcl.backbone.to(memory_format=torch.channels_last)
        convolution = next(m for m in model.sadcl.backbone.modules() if isinstance(m, torch.nn.Conv2d))
        assert convolution.weight.is_contiguous(memory_format=torch.channels_last)
        actual = model(pixel_values.contiguous(memory_format=torch.channels_last)).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_train_script_torch_compile_with_the_sadcl_objective(tmp_path):
    """`--torch_compile` (the Trainer's flag; aot_eager here) and `--channels_last` through run_training: the
    compiled run logs the eager run's loss components and saves a loadable model."""
    options = {"num_train": 16, "num_validation": 8, "num_test": 8, "cache_dir": str(tmp_path / "cache")}
    common = [
        "--config", str(ROOT / "configs" / "demo.yaml"), "--stage", "single", "--image_size", "32",
        "--dataset_options", json.dumps(options), "--per_device_train_batch_size", "8", "--max_steps", "1",
        "--logging_steps", "1", "--config_overrides", json.dumps({"dropout": 0.0}), "--resize_margin", "0",
        "--use_ema", "false", "--channels_last",
    ]  # fmt: skip
    logs = {}
    for name, extra in (("eager", []), ("compiled", ["--torch_compile_backend", "aot_eager"])):
        arguments = parse_arguments([*common, "--output_dir", str(tmp_path / name), *extra])
        assert arguments[2].torch_compile == (name == "compiled")
        torch._dynamo.utils.counters.clear()
        run_training(*arguments)
        if name == "compiled":
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the step ran through Dynamo
        log = json.loads((tmp_path / name / "train_log.json").read_text())
        logs[name] = next(entry for entry in log if "loss" in entry)
    for key in ("loss", "asl", "sscl", "pscl"):
        assert logs["compiled"][key] == pytest.approx(logs["eager"][key], rel=1e-4), key
    weights = load_file(tmp_path / "compiled" / "model" / "model.safetensors")
    assert not any(key.startswith("_orig_mod") for key in weights)  # saved unwrapped, loadable as usual
