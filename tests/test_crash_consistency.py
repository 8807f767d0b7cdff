"""A training process killed (SIGKILL) at any file write of a checkpoint save leaves that checkpoint recognisably
incomplete; `--resume_from_checkpoint latest` then resumes from the newest complete one and ends with the same weights,
EMA and memory bank as the uninterrupted run.

One subprocess (`scripts/train.py` under a small wrapper) trains; when it reaches the save of `checkpoint-4` it forks
one child per write point: child `n` runs the save and is SIGKILLed just before its `n`-th file operation in the
checkpoint folder (opens for writing, renames, mkdirs; seen through `sys.addaudithook`), and the parent copies the
output folder as the kill left it. The parent then saves normally and finishes: it is the uninterrupted run.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sadcl_hf.training.callbacks import checkpoint_is_complete, newest_complete_checkpoint, resolve_resume_checkpoint
from sadcl_hf.training.recipe import parse_arguments, run_training

from .conftest import PROJECT_ROOT

KILL_STEP = 4
FINAL_FILES = ("model.safetensors", "ema.safetensors", "memory_bank-rank0.safetensors")

KILLING_WRAPPER = """
import itertools, json, os, runpy, shutil, signal, sys
import torch
from sadcl_hf.training.trainer import SADCLTrainer

kill_step, snapshots = int(sys.argv[1]), sys.argv[2]
sys.argv = sys.argv[3:]
output_dir = sys.argv[sys.argv.index("--output_dir") + 1]
target = os.path.join(output_dir, f"checkpoint-{kill_step}")
kill = {"at": 0, "count": 0}


def in_target(path):
    return isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).startswith(target)


def kill_at_write(event, args):
    if not kill["at"]:
        return
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if mode else bool(flags & (os.O_WRONLY | os.O_RDWR))
        hit = writing and in_target(path)
    elif event in ("os.rename", "os.mkdir", "os.remove"):
        hit = in_target(args[0]) or (event == "os.rename" and in_target(args[1]))
    else:
        return
    if hit:
        kill["count"] += 1
        if kill["count"] == kill["at"]:
            name = os.path.basename(os.fsdecode(args[1 if event == "os.rename" else 0]))
            with open(os.path.join(snapshots, "events.jsonl"), "a") as log:
                log.write(json.dumps([kill["at"], event, name]) + "\\n")
            os.kill(os.getpid(), signal.SIGKILL)


sys.addaudithook(kill_at_write)
save = SADCLTrainer._save_checkpoint


def save_killed_at_each_write(self, model, trial):
    if self.state.global_step == kill_step:
        for kill_at in itertools.count(1):
            child = os.fork()
            if child == 0:
                torch.set_num_threads(1)
                kill["at"] = kill_at
                save(self, model, trial)
                os._exit(0)  # the save has fewer writes than kill_at: every point was tried
            _, status = os.waitpid(child, 0)
            if not os.WIFSIGNALED(status):
                break
            shutil.copytree(output_dir, os.path.join(snapshots, str(kill_at)))
            shutil.rmtree(target, ignore_errors=True)
    save(self, model, trial)
    if self.state.global_step == kill_step:
        shutil.copytree(output_dir, os.path.join(snapshots, "complete"))


SADCLTrainer._save_checkpoint = save_killed_at_each_write
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _arguments(output_dir: Path, cache: Path) -> list[str]:
    data_options = {"num_train": 32, "num_validation": 8, "num_test": 8, "cache_dir": str(cache)}
    return [
        "--config", PROJECT_ROOT / "configs" / "demo.yaml", "--output_dir", output_dir,
        "--dataset_options", json.dumps(data_options), "--max_eval_samples", "8",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--logging_steps", "1",
        "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", "--seed", "7",
        "--resize_margin", "0", "--crop_scales", "1.0", "--config_overrides", json.dumps({"dropout": 0.0}),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def killed_saves(tmp_path_factory):
    """(uninterrupted output folder, {kill point: output folder as the kill left it}, [(point, event, file)])."""
    root = tmp_path_factory.mktemp("crash")
    wrapper, snapshots, output_dir = root / "kill_at_write.py", root / "snapshots", root / "uninterrupted"
    wrapper.write_text(KILLING_WRAPPER)
    snapshots.mkdir()
    command = [sys.executable, wrapper, KILL_STEP, snapshots, PROJECT_ROOT / "scripts" / "train.py"]
    command += _arguments(output_dir, root / "cache")
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=900, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in (snapshots / "events.jsonl").read_text().splitlines()]
    folders = {path.name: path for path in snapshots.iterdir() if path.is_dir()}
    return output_dir, folders, events


def test_a_save_killed_at_any_write_is_incomplete_and_resume_names_the_newest_complete_one(killed_saves):
    _, folders, events = killed_saves
    files = {file for _, _, file in events}
    # the kills fell between the SADCL state, transformers' files and the completion record
    expected = {"memory_bank-rank0.safetensors", "ema.safetensors", "trainer_state.json", "checkpoint_complete.json"}
    assert expected <= files
    assert [point for point, _, _ in events] == list(range(1, len(events) + 1))
    for point, event, file in events:
        output_dir = folders[str(point)]
        checkpoint = output_dir / f"checkpoint-{KILL_STEP}"
        assert not checkpoint_is_complete(checkpoint), (point, event, file)
        assert newest_complete_checkpoint(output_dir) == output_dir / "checkpoint-2"
        refusal = r"(incomplete|no such folder).* newest complete one in .* is .*checkpoint-2$"
        with pytest.raises(ValueError, match=refusal):
            resolve_resume_checkpoint(str(checkpoint), output_dir)
    assert checkpoint_is_complete(folders["complete"] / f"checkpoint-{KILL_STEP}")


def _kill_point(events, where: str) -> str:
    """The kill point just before the first write of `where` (a file name), or "complete" (after the save)."""
    if where == "complete":
        return where
    return str(next(point for point, _, file in events if file == where))


@pytest.mark.parametrize("where", ["trainer_state.json", "checkpoint_complete.json", "complete"])
def test_resume_latest_after_a_kill_ends_like_the_uninterrupted_run(killed_saves, where, tmp_path):
    uninterrupted, folders, events = killed_saves
    output_dir = tmp_path / "resumed"
    shutil.copytree(folders[_kill_point(events, where)], output_dir)
    run_training(*parse_arguments(list(map(str, [
        *_arguments(output_dir, tmp_path / "cache"), "--resume_from_checkpoint", "latest"
    ]))))  # fmt: skip
    checkpoints = sorted(path.name for path in output_dir.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    for name in FINAL_FILES:
        expected = load_file(uninterrupted / "checkpoint-6" / name)
        resumed = load_file(output_dir / "checkpoint-6" / name)
        assert expected.keys() == resumed.keys()
        for key in expected:
            assert resumed[key].equal(expected[key]), f"{name}: {key}"


def _launch(num_processes: int, output_dir: Path, cache: Path, *extra) -> str:
    """`scripts/train.py` on `num_processes` CPU processes (`accelerate launch`, gloo); returns its output."""
    data_options = {"num_train": 32, "num_validation": 8, "num_test": 8, "cache_dir": str(cache)}
    arguments = [
        "--config", PROJECT_ROOT / "configs" / "demo.yaml", "--output_dir", output_dir,
        "--dataset_options", json.dumps(data_options), "--max_eval_samples", "8", "--image_size", "32",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--logging_steps", "1",
        "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", *extra,
    ]  # fmt: skip
    if num_processes == 1:
        command = [sys.executable, PROJECT_ROOT / "scripts" / "train.py", *arguments]
    else:
        accelerate = Path(sys.executable).with_name("accelerate")
        command = [accelerate, "launch", "--multi_gpu", "--num_processes", num_processes, "--num_machines", "1",
                   "--mixed_precision", "no", PROJECT_ROOT / "scripts" / "train.py", *arguments]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = list(map(str, command))
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=PROJECT_ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def _world_size(checkpoint: Path) -> int:
    return json.loads((checkpoint / "checkpoint_complete.json").read_text())["world_size"]


def test_resume_from_two_processes_on_one_and_back(tmp_path):
    """A checkpoint of 2 processes resumes on 1 and one of 1 process on 2, with the documented warning (process r
    takes saved process r % S's memory bank)."""
    output_dir = tmp_path / "run"
    _launch(2, output_dir, tmp_path / "cache")
    assert _world_size(output_dir / "checkpoint-2") == 2
    assert {path.name for path in (output_dir / "checkpoint-2").glob("memory_bank-*")} == {
        "memory_bank-rank0.safetensors", "memory_bank-rank1.safetensors"
    }  # fmt: skip
    for step in (4, 6):
        shutil.rmtree(output_dir / f"checkpoint-{step}")
    output = _launch(1, output_dir, tmp_path / "cache", "--resume_from_checkpoint", "latest")
    assert "saved by 2 processes, resumed on 1" in output
    assert _world_size(output_dir / "checkpoint-4") == 1
    shutil.rmtree(output_dir / "checkpoint-6")
    output = _launch(2, output_dir, tmp_path / "cache", "--resume_from_checkpoint", "true")
    assert "saved by 1 processes, resumed on 2" in output
    assert _world_size(output_dir / "checkpoint-6") == 2
