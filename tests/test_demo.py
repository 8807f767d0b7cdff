import json
import subprocess
import sys
from pathlib import Path

from transformers import AutoConfig

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_every_step_end_to_end(tmp_path):
    """`make demo`'s script on a small digits-mosaic with a few steps per stage: every artefact is produced."""
    options = {"num_train": 64, "num_validation": 32, "num_test": 32, "cache_dir": str(tmp_path / "cache")}
    output = tmp_path / "demo"
    command = [
        sys.executable, str(ROOT / "scripts" / "demo.py"), "--output-dir", str(output),
        "--baseline-steps", "2", "--sadcl-steps", "2", "--num-examples", "3", "--dataset-options", json.dumps(options),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    stdout = result.stdout
    for step in range(1, 9):
        assert f"=== {step}/8" in stdout
    assert "baseline ema" in stdout and "sadcl raw" in stdout
    assert stdout.count("true:") == 3

    results = json.loads((output / "results.json").read_text())
    for stage in ("baseline", "sadcl", "baseline_raw", "sadcl_raw"):
        assert {"map", "cf1", "of1", "cf1_top3", "of1_top3"} <= set(results[stage])
    assert results["wall_seconds"] > 0
    assert f"{results['sadcl']['map']:.2f}" in stdout  # the printed numbers are the measured ones

    model_dir = output / "model"
    files = {path.name for path in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_sadcl.py", "README.md"} <= files
    config = AutoConfig.from_pretrained(model_dir)
    assert config.label_names == [str(i) for i in range(10)]
    assert config.thresholds is not None and len(config.thresholds) == 10
    card = (model_dir / "README.md").read_text()
    assert "model-index" in card and "digits-mosaic" in card
    assert len(list((output / "attention").glob("*.png"))) == 3
    assert sorted(path.name for path in (output / "examples").iterdir()) == ["test_0.png", "test_1.png", "test_2.png"]
    separation = results["label_feature_separation"]
    assert set(separation) == {"baseline", "sadcl"}
    for stage in ("baseline", "sadcl"):
        assert -1 <= separation[stage]["silhouette"] <= 1 and -2 <= separation[stage]["separation"] <= 2
        assert f"{separation[stage]['silhouette']:.3f}" in stdout  # printed in step 4
        assert (output / "label_features" / f"tsne_{stage}.png").stat().st_size > 10_000
