"""Every script answers a user's mistake with one error line on stderr and a non-zero exit, never a traceback
(`sadcl_hf.cli.run_script`); `--debug` brings the traceback back.

Each case is a bad argument that fails before any work starts. The scripts run as users run them (subprocesses,
`conftest.run_script`), all at once, since starting Python with torch and transformers is most of their time.
"""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import FIXTURES_DIR, PROJECT_ROOT, run_script

UNKNOWN_DATASET = "Unknown dataset 'no-such-dataset'"


def bad_invocations(tmp: Path, model_dir: Path) -> dict[str, tuple[list, str]]:
    """{script: (bad arguments, what its error line must say)}; one entry per file in scripts/."""
    names = tmp / "names.json"
    names.write_text(json.dumps([f"name_{i}" for i in range(80)]))
    missing_config = tmp / "missing.yaml"
    checkpoint = FIXTURES_DIR / "q2l" / "resnet101_state_dict.fp16.safetensors"
    return {
        "convert_official_checkpoint": (
            [checkpoint, tmp / "converted", "--id2label", names],
            "id2label has 80 names but the checkpoint has 6 classes",
        ),
        "train": (
            ["--preset", "tiny", "--dataset", "no-such-dataset", "--output_dir", tmp / "train", "--max_steps", 1],
            UNKNOWN_DATASET,
        ),
        "predict": ([tmp / "image.png", "--model", tmp / "no-model"], "cannot load the model"),
        "calibrate_thresholds": (["--model", model_dir, "--dataset", "no-such-dataset", "--dry-run"], UNKNOWN_DATASET),
        "compute_prototypes": (
            ["--model", model_dir, "--output", tmp / "prototypes.safetensors", "--dataset", "no-such-dataset"],
            UNKNOWN_DATASET,
        ),
        "visualize_features": (
            ["--model", model_dir, "--dataset", "no-such-dataset", "--split", "test", "--output-dir", tmp / "features"],
            UNKNOWN_DATASET,
        ),
        "export_onnx": ([tmp / "no-model", tmp / "model.onnx"], str(tmp / "no-model")),
        "push_to_hub": ([tmp, "user/model"], "is not a model folder (no config.json)"),
        "app": (["--model", tmp / "no-model"], str(tmp / "no-model")),
        "benchmark": (["data", "--root", tmp / "no-data", "--dataset", "no-such-dataset"], UNKNOWN_DATASET),
        "demo": (["--config", missing_config, "--output-dir", tmp / "demo"], f"no such file {missing_config}"),
        "ablation": (["--config", missing_config, "--output-dir", tmp / "ablation"], f"no such file {missing_config}"),
    }


@pytest.fixture(scope="module")
def script_results(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("script_errors")
    cases = bad_invocations(tmp, tiny_model_dir)
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = {name: pool.submit(run_script, name, arguments, 300) for name, (arguments, _) in cases.items()}
        converter_arguments = cases["convert_official_checkpoint"][0]
        debug = pool.submit(run_script, "convert_official_checkpoint", [*converter_arguments, "--debug"], 300)
        results = {name: run.result() for name, run in runs.items()}
    return cases, results, debug.result()


@pytest.mark.parametrize("script", sorted(path.stem for path in (PROJECT_ROOT / "scripts").glob("*.py")))
def test_a_bad_argument_gives_one_error_line_and_no_traceback(script, script_results):
    cases, results, _ = script_results
    assert script in cases, f"scripts/{script}.py has no bad-argument case here"
    result, expected = results[script], cases[script][1]
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if "error" in line.lower() or expected in line]
    assert len(error_lines) == 1, result.stderr[-3000:]
    assert expected in error_lines[0], result.stderr[-3000:]


def test_debug_shows_the_traceback(script_results):
    _, _, debug = script_results
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr
    assert "ValueError: id2label has 80 names but the checkpoint has 6 classes" in debug.stderr
