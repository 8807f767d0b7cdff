"""Streaming data: parquet shards read as a `datasets.IterableDataset`, training with `max_steps`, and two
`accelerate launch` processes that each read their own shards (`split_dataset_by_node`)."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import datasets
import pytest

from sadcl_hf.data import DatasetLayoutError, dataset_label_names, load_multilabel_dataset
from sadcl_hf.data.streaming import load_streaming_dataset, write_parquet_shards
from sadcl_hf.training.recipe import parse_arguments

ROOT = Path(__file__).resolve().parents[1]

# Runs scripts/train.py's entry point and records, per process, the `sample_id` of every training example the
# training collator receives (the evaluation collator is a different object and is not recorded).
RECORDING_TRAIN_SCRIPT = """
import json, os, sys
import sadcl_hf.training.recipe as training
from sadcl_hf.training.recipe import parse_arguments, run_training

record = os.path.join(sys.argv[1], f"seen-rank{os.environ.get('RANK', '0')}.jsonl")
original_trainer = training.SADCLTrainer

class RecordingTrainer(original_trainer):
    def __init__(self, *args, data_collator=None, **kwargs):
        def collate(examples):
            with open(record, "a") as handle:
                handle.write(json.dumps([example["sample_id"] for example in examples]) + "\\n")
            return data_collator(examples)
        super().__init__(*args, data_collator=collate, **kwargs)

training.SADCLTrainer = RecordingTrainer
run_training(*parse_arguments(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def parquet_root(tmp_path_factory) -> Path:
    """digits-mosaic as parquet shards with a `sample_id` column: 4 training shards of 12, 1 validation shard."""
    root = tmp_path_factory.mktemp("parquet")
    options = {"num_train": 48, "num_validation": 8, "num_test": 8, "cache_dir": str(root / "cache")}
    for split, num_shards in (("train", 4), ("validation", 1)):
        dataset = load_multilabel_dataset("digits-mosaic", split=split, **options)
        dataset = dataset.add_column("sample_id", [f"{split}-{index}" for index in range(len(dataset))])
        write_parquet_shards(dataset, root / "shards", split, num_shards)
    return root / "shards"


def test_parquet_shards_stream_with_their_class_names(parquet_root, tmp_path):
    stream = load_streaming_dataset(parquet_root, "train")
    assert isinstance(stream, datasets.IterableDataset) and stream.n_shards == 4
    assert dataset_label_names(stream) == [str(digit) for digit in range(10)]
    rows = list(stream)
    assert [row["sample_id"] for row in rows] == [f"train-{index}" for index in range(48)]
    assert rows[0]["image"].size == (64, 64) and all(isinstance(i, int) for i in rows[0]["labels"])
    with pytest.raises(DatasetLayoutError, match="WebDataset shards of the 'test' split"):
        load_streaming_dataset(parquet_root, "test")


def test_webdataset_shards_stream_in_the_same_schema(tmp_path):
    dataset = load_multilabel_dataset(
        "digits-mosaic", split="validation", num_train=8, num_validation=12, num_test=8, cache_dir=str(tmp_path / "c")
    )
    names = dataset_label_names(dataset)
    (tmp_path / "wds" / "validation").mkdir(parents=True)
    for shard in range(2):
        with tarfile.open(tmp_path / "wds" / "validation" / f"validation-{shard:05d}.tar", "w") as tar:
            for index in range(shard * 6, shard * 6 + 6):
                row, encoded = dataset[index], io.BytesIO()
                row["image"].save(encoded, format="PNG")
                labels = json.dumps({"labels": [names[i] for i in reversed(row["labels"])]}).encode()
                for extension, data in (("png", encoded.getvalue()), ("json", labels)):
                    member = tarfile.TarInfo(f"{index:06d}.{extension}")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
    with pytest.raises(DatasetLayoutError, match="classes.txt"):
        load_streaming_dataset(tmp_path / "wds", "validation")
    (tmp_path / "wds" / "classes.txt").write_text("\n".join(names) + "\n")
    stream = load_streaming_dataset(tmp_path / "wds", "validation")
    assert stream.n_shards == 2 and dataset_label_names(stream) == names
    rows = list(stream)
    assert [row["labels"] for row in rows] == [dataset[index]["labels"] for index in range(12)]
    assert rows[0]["image"].size == (64, 64)


def test_streaming_needs_max_steps(parquet_root, tmp_path):
    from sadcl_hf.training.recipe import run_training

    arguments = parse_arguments(
        ["--config", str(ROOT / "configs" / "demo.yaml"), "--streaming", "--dataset_root", str(parquet_root),
         "--max_steps", "-1", "--num_train_epochs", "1", "--output_dir", str(tmp_path)]
    )  # fmt: skip
    with pytest.raises(ValueError, match="--streaming needs --max_steps"):
        run_training(*arguments)


def test_two_processes_stream_disjoint_shards_and_finish(parquet_root, tmp_path):
    script = tmp_path / "train_recording.py"
    script.write_text(RECORDING_TRAIN_SCRIPT)
    record_dir = tmp_path / "seen"
    record_dir.mkdir()
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", str(script), str(record_dir),
        "--config", str(ROOT / "configs" / "demo.yaml"), "--stage", "single", "--streaming",
        "--dataset_root", str(parquet_root), "--train_split", "train", "--eval_split", "validation",
        "--output_dir", str(tmp_path / "run"),
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
        "--max_steps", "3", "--logging_steps", "1", "--dataloader_num_workers", "0", "--image_size", "32",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    seen = {}
    for rank in (0, 1):
        batches = [json.loads(line) for line in (record_dir / f"seen-rank{rank}.jsonl").read_text().splitlines()]
        seen[rank] = [sample for batch in batches for sample in batch if sample.startswith("train-")]
    assert len(seen[0]) >= 3 * 4 and len(seen[1]) >= 3 * 4  # max_steps batches of 4 on each process
    assert not set(seen[0]) & set(seen[1])  # disjoint samples
    shard_of = lambda sample: int(sample.split("-")[1]) // 12  # noqa: E731  (12 rows per shard, in order)
    assert not {shard_of(s) for s in seen[0]} & {shard_of(s) for s in seen[1]}  # each process reads whole shards
    state = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert "eval_map" in state
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert [entry["step"] for entry in log if "loss" in entry] == [1, 2, 3]
