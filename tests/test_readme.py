"""The README's commands and Python snippets run as written after `make demo` (issue 20), on a CPU without the Hub.

Every `bash` command and `python` block of README.md is a test case: it runs in a folder laid out as `make demo`
leaves it (`runs/demo/model`, `runs/demo/examples/test_N.png`; a tiny model stands in for the demo's) plus a small
`my_data/` image folder for "Train on your own images", or it is skipped by `SKIPPED` below with its reason. A
README command matching neither fails, so a new snippet is either run or listed here.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sadcl_hf.data import dataset_label_names, load_multilabel_dataset
from sadcl_hf.image_processing import image_processor_for_config

from .conftest import PROJECT_ROOT, make_tiny_model

NUM_EXAMPLES = 8  # scripts/demo.py's --num-examples default: runs/demo/examples/test_0.png ... test_7.png

# A README command or block containing the key is not run, for the reason given.
SKIPPED = {
    "make demo": "the fixture lays out what `make demo` leaves (a tiny model); tests/test_demo.py runs the demo script",
    "make app": "serves the web tagger until stopped; tests/test_app_browser.py drives it in a browser",
    "make test": "the test suite itself",
    "accelerate launch --multi_gpu": "needs GPUs and a benchmark dataset downloaded to /data",
    "--preset paper-r101-448": "the GPU recipe: downloads ResNet-101's ImageNet weights from the Hub",
    "scripts/app.py --model runs/demo/model": "serves the web tagger until stopped (tests/test_app_browser.py)",
    "your-name/": "needs the Hub (a repository of yours and a token)",
    "--root /data/coco": "needs MS-COCO downloaded to /data/coco",
    "model_best.pth.tar": "needs a released checkpoint downloaded first",
    "visualize_features.py": "t-SNE of 2,000 features of the full digits-mosaic test split takes minutes here; "
    "tests/test_feature_analysis.py runs it on a small split",
    "export_onnx.py runs/demo/model": "calibrates and evaluates on the full digits-mosaic splits (minutes); "
    "tests/test_onnx.py and tests/test_script_output.py run the int8 export on small splits",
    "runs/demo-stage1": "needs the separate stage-1 run of the Performance section (minutes of training)",
    "benchmark.py tagging": "minutes of timing (thousands of tagger requests); tests/test_onnx.py runs it on "
    "small JPEGs (--clients, --unbatched-baseline, --tagger-images)",
}
# Appended to a command for time: the arguments given later on the command line win.
SHORTENED = {"--output_dir runs/mine-cpu": ["--max_steps", "2"]}


def readme_snippets() -> list[tuple[str, str]]:
    """(language, code) of each command of the README's `bash` blocks (continuation lines joined, comments dropped)
    and of each `python` block."""
    snippets = []
    text = (PROJECT_ROOT / "README.md").read_text()
    for language, body in re.findall(r"(?ms)^```(\w+)\n(.*?)^```", text):
        if language == "python":
            snippets.append(("python", body))
        elif language in ("bash", "sh", "shell"):
            for command in re.sub(r"\\\n\s*", " ", body).splitlines():
                command = re.sub(r"(^|\s+)#\s.*$", "", command).strip()
                if command:
                    snippets.append(("bash", command))
    return snippets


def skip_reason(code: str) -> str | None:
    return next((reason for key, reason in SKIPPED.items() if key in code), None)


SNIPPETS = readme_snippets()


def test_every_skip_entry_names_a_readme_snippet():
    stale = [key for key in SKIPPED if not any(key in code for _, code in SNIPPETS)]
    assert not stale, f"SKIPPED entries that match no README snippet any more: {stale}"


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    """A working folder laid out as after `make demo`: a tiny digits model at runs/demo/model, test images at
    runs/demo/examples/test_N.png, and a small my_data/{train,validation} image folder with metadata.jsonl."""
    folder = tmp_path_factory.mktemp("readme")
    for name in ("scripts", "configs"):
        (folder / name).symlink_to(PROJECT_ROOT / name)
    digits = load_multilabel_dataset(
        "digits-mosaic", num_train=32, num_validation=16, num_test=NUM_EXAMPLES, cache_dir=str(folder / "cache")
    )
    names = dataset_label_names(digits["train"])
    model = make_tiny_model(num_labels=len(names))
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: index for index, name in enumerate(names)}
    model.save_pretrained(folder / "runs" / "demo" / "model")
    image_processor_for_config(model.config).save_pretrained(folder / "runs" / "demo" / "model")
    examples = folder / "runs" / "demo" / "examples"
    examples.mkdir()
    for index, image in enumerate(digits["test"]["image"]):
        image.save(examples / f"test_{index}.png")
    for split in ("train", "validation"):
        split_dir = folder / "my_data" / split
        split_dir.mkdir(parents=True)
        with open(split_dir / "metadata.jsonl", "w") as metadata:
            for index, row in enumerate(digits[split]):
                row["image"].save(split_dir / f"{index:04d}.png")
                labels = [names[label] for label in row["labels"]]
                metadata.write(json.dumps({"file_name": f"{index:04d}.png", "labels": labels}) + "\n")
    return folder


def _run(code: str, language: str, folder: Path) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `python` is this venv's
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    if language == "python":
        command = [sys.executable, "-c", code]
    else:
        extra = next((arguments for key, arguments in SHORTENED.items() if key in code), [])
        command = ["bash", "-c", " ".join([code, *extra])]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=folder, env=environment)


@pytest.mark.parametrize(
    ("language", "code"), SNIPPETS, ids=[f"{language}:{code.splitlines()[0][:60]}" for language, code in SNIPPETS]
)
def test_readme_snippet_runs_as_written(language, code, demo_folder):
    reason = skip_reason(code)
    if reason is not None:
        pytest.skip(reason)
    result = _run(code, language, demo_folder)
    assert result.returncode == 0, f"{code}\n{(result.stdout + result.stderr)[-3000:]}"
    if "scripts/predict.py" in code and "--output preds.jsonl" in code:
        records = (demo_folder / "preds.jsonl").read_text().splitlines()
        assert len(records) == NUM_EXAMPLES
    if "runs/mine-cpu" in code:
        assert (demo_folder / "runs" / "mine-cpu" / "model" / "config.json").is_file()
