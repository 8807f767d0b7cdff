"""Unreadable training images: skipped with a warning naming each file once, counted, and a clear stop when too many."""

import json
import logging
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from sadcl_hf import SADCLForImageClassification
from sadcl_hf.data import (
    ImageLoadError,
    MultiLabelCollator,
    TooManyUnreadableImagesError,
    multilabel_features,
    read_unreadable_list,
)
from sadcl_hf.evaluation import mean_average_precision
from sadcl_hf.image_processing import eval_collator_for_config

from .conftest import run_script


def write_folder(
    root: Path, num_train: int, corrupt: set[int], corrupt_validation: frozenset[int] = frozenset()
) -> Path:
    """`root/{train,validation}/metadata.csv` over 16x16 PNGs labelled red/blue; `train/NNNN.png` for `corrupt` (and
    `validation/NNNN.png` for `corrupt_validation`) are garbage bytes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", num_train), ("validation", 8)):
        folder = root / split
        folder.mkdir(parents=True)
        rows = ["file_name,labels"]
        for index in range(count):
            path = folder / f"{index:04d}.png"
            if index in (corrupt if split == "train" else corrupt_validation):
                path.write_bytes(b"\x89PNG this is not an image")
            else:
                PIL.Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
            rows.append(f"{path.name},{['red', 'blue', 'red|blue'][index % 3]}")
        (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def train_arguments(root: Path, output_dir: Path, *extra) -> list:
    return [
        "--dataset", "folder", "--dataset_root", root, "--preset", "tiny", "--use_pretrained_backbone", "false",
        "--stage", "single", "--output_dir", output_dir, "--max_steps", "4", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8", "--lr_schedule", "trainer", "--use_cpu", "--dataloader_num_workers", "0",
        "--dataloader_pin_memory", "false", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
        *extra,
    ]  # fmt: skip


def test_one_unreadable_image_in_the_middle_does_not_stop_training(tmp_path):
    root = write_folder(tmp_path / "data", num_train=24, corrupt={12})
    bad = root / "train" / "0012.png"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "unreadable_images.txt").write_text("/an/earlier/run.png\n")  # a fresh run starts its own
    result = run_script("train", train_arguments(root, tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    # 4 steps x 8 > 24 images: the file comes twice, is warned about once
    assert result.stderr.count(f"Skipping unreadable image {bad}") == 1
    assert f"Skipped 1 unreadable image(s), listed in {tmp_path / 'run' / 'unreadable_images.txt'}" in (result.stderr)
    assert read_unreadable_list(tmp_path / "run" / "unreadable_images.txt") == [str(bad)]
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert results["train_unreadable_images"] == 1
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_too_many_unreadable_images_stop_with_a_clear_message(tmp_path):
    root = write_folder(tmp_path / "data", num_train=24, corrupt=set(range(0, 24, 4)))
    result = run_script("train", train_arguments(root, tmp_path / "run"))
    assert result.returncode != 0
    (message,) = [line for line in result.stderr.splitlines() if "images seen were unreadable" in line]
    assert message.startswith("error: 2 of the ")  # scripts print one-line errors
    assert "more than max_unreadable_fraction=0.01" in message and "raise max_unreadable_fraction" in message
    assert str(root / "train") in message  # names the latest unreadable file


def _examples(tmp_path: Path, num_good: int, bad_names: list[str]) -> tuple[list[dict], list[Path]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    good = tmp_path / "good.png"
    PIL.Image.new("RGB", (6, 6), "blue").save(good)
    bad_paths = []
    for name in bad_names:
        (tmp_path / name).write_bytes(b"not an image")
        bad_paths.append(tmp_path / name)
    paths = [str(good)] * num_good + [str(path) for path in bad_paths]
    dataset = datasets.Dataset.from_dict(
        {"image": paths, "labels": [[0]] * num_good + [[1]] * len(bad_paths)},
        features=multilabel_features(["a", "b"]),
    ).cast_column("image", datasets.Image(decode=False))
    return [dataset[i] for i in range(len(dataset))], bad_paths


def test_collator_warns_once_per_file_across_workers_and_counts(tmp_path, caplog):
    examples, (bad,) = _examples(tmp_path, num_good=3, bad_names=["bad.jpg"])
    listing = tmp_path / "unreadable.txt"
    # two collators sharing the list stand for two dataloader workers (or two epochs with fresh workers)
    workers = [MultiLabelCollator(2, max_unreadable_fraction=0.5, unreadable_list=listing) for _ in range(2)]
    with caplog.at_level(logging.WARNING):
        for collator in workers + workers:
            batch = collator(examples)
            assert batch["pixel_values"].shape == (4, 3, 6, 6)
            assert torch.equal(batch["labels"][3], torch.tensor([1.0, 0.0]))  # a readable example took its place
    assert caplog.text.count(f"Skipping unreadable image {bad}") == 1
    assert read_unreadable_list(listing) == [str(bad)]
    assert (workers[0].num_seen, workers[0].num_unreadable, workers[0].unreadable_files) == (8, 2, {str(bad)})


def test_collator_fraction_rule(tmp_path):
    examples, bad_paths = _examples(tmp_path, num_good=6, bad_names=["x.png", "y.png"])
    good, (first_bad, second_bad) = examples[:6], examples[6:]
    collator = MultiLabelCollator(2, max_unreadable_fraction=0.2)
    collator(good[:1])
    for _ in range(2):  # one unreadable file never stops training, however often it comes back
        batch = collator([first_bad])  # an earlier readable example stands in for it
        assert torch.equal(batch["labels"], torch.tensor([[1.0, 0.0]]))
    collator(good[1:])
    with pytest.raises(TooManyUnreadableImagesError, match=r"3 of the 9 images seen were unreadable") as raised:
        collator([second_bad])  # a second file, and 3 of 9 = 33% > 20%
    assert str(bad_paths[1]) in str(raised.value)
    tolerant = MultiLabelCollator(2, max_unreadable_fraction=0.3)
    tolerant(good + [first_bad, second_bad])  # 2 of 8 = 25% <= 30%
    assert tolerant.num_unreadable == 2
    with pytest.raises(ImageLoadError, match=r"x\.png"):
        MultiLabelCollator(2)(good + [first_bad])  # the default 0: the first unreadable image raises
    with pytest.raises(ValueError, match="max_unreadable_fraction must be a number in"):
        MultiLabelCollator(2, max_unreadable_fraction=1.5)


def test_dataloader_workers_share_the_list_and_stop_with_a_one_line_error(tmp_path):
    examples, bad_paths = _examples(tmp_path, num_good=14, bad_names=["x.png"])
    listing = tmp_path / "unreadable.txt"
    collator = MultiLabelCollator(2, max_unreadable_fraction=0.5, unreadable_list=listing)
    loader = torch.utils.data.DataLoader(examples * 2, batch_size=5, num_workers=2, collate_fn=collator)
    assert sum(len(batch["labels"]) for batch in loader) == 30  # every batch keeps its size
    assert read_unreadable_list(listing) == [str(bad_paths[0])]  # two workers saw the file twice: listed once

    examples, bad_paths = _examples(tmp_path / "many", num_good=2, bad_names=["y.png", "z.png"])
    strict = MultiLabelCollator(2, max_unreadable_fraction=0.1)
    with pytest.raises(TooManyUnreadableImagesError) as raised:
        list(torch.utils.data.DataLoader(examples, batch_size=4, num_workers=1, collate_fn=strict))
    assert str(raised.value).startswith("2 of the 4 images seen were unreadable") and "\n" not in str(raised.value)


def test_two_stage_run_skips_an_unreadable_validation_and_training_image(tmp_path):
    """Per-epoch evaluation drops the unreadable validation image from the metrics; the stage-2 prototypes over the
    training set skip the unreadable training image; each file is named once and listed; the runs finish."""
    root = write_folder(tmp_path / "data", num_train=16, corrupt={5}, corrupt_validation=frozenset({3}))
    bad_train, bad_validation = root / "train" / "0005.png", root / "validation" / "0003.png"
    epochs = ["--max_steps", "-1", "--num_train_epochs", "2", "--eval_strategy", "epoch", "--use_ema", "false"]
    stage1 = run_script("train", train_arguments(root, tmp_path / "stage1", *epochs, "--stage", "baseline"))
    assert stage1.returncode == 0, stage1.stderr[-3000:]
    stage2 = run_script(
        "train",
        train_arguments(
            root,
            tmp_path / "stage2",
            *epochs,
            "--stage",
            "sadcl",
            "--model_name_or_path",
            tmp_path / "stage1" / "model",
        ),
    )
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    for result, run in ((stage1, tmp_path / "stage1"), (stage2, tmp_path / "stage2")):
        for bad in (bad_train, bad_validation):  # met by the prototypes, 2 epochs of training and 2 evaluations
            assert result.stderr.count(f"Skipping unreadable image {bad}") == 1
        assert sorted(read_unreadable_list(run / "unreadable_images.txt")) == sorted(
            [str(bad_train), str(bad_validation)]
        )
        assert json.loads((run / "all_results.json").read_text())["train_unreadable_images"] == 2
    assert (tmp_path / "stage2" / "prototypes.safetensors").is_file()

    # the reported mAP is that of the final model over the 7 readable validation images, none duplicated
    model = SADCLForImageClassification.from_pretrained(tmp_path / "stage2" / "model").eval()
    readable = [row for row in (root / "validation" / "metadata.csv").read_text().splitlines()[1:] if "0003" not in row]
    names = model.config.label_names
    targets = np.array([[name in row.split(",")[1].split("|") for name in names] for row in readable], dtype=float)
    with torch.no_grad():
        pixels = torch.stack(
            [eval_collator_for_config(model.config)([{"image": str(root / "validation" / row.split(",")[0]),
                                                       "labels": []}])["pixel_values"][0] for row in readable]
        )  # fmt: skip
        scores = torch.sigmoid(model(pixel_values=pixels).logits).numpy()
    reported = json.loads((tmp_path / "stage2" / "all_results.json").read_text())["eval_map"]
    assert reported == pytest.approx(mean_average_precision(scores, targets), abs=1e-4)


def test_evaluation_drops_an_unreadable_image_and_its_label_row(tmp_path, caplog):
    examples, (bad,) = _examples(tmp_path, num_good=3, bad_names=["bad.png"])
    listing = tmp_path / "unreadable.txt"
    model_config = SADCLForImageClassification.config_class.from_preset(
        "tiny", id2label={0: "a", 1: "b"}, use_pretrained_backbone=False, image_size=32
    )
    collator = eval_collator_for_config(model_config, max_unreadable_fraction=0.5, unreadable_list=listing)
    with caplog.at_level(logging.WARNING):
        batch = collator(examples)
        empty = collator(examples[3:])  # a batch of only unreadable images is empty, not a duplicate
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and torch.equal(batch["labels"], torch.tensor([[1.0, 0]] * 3))
    assert empty["pixel_values"].shape == (0, 3, 32, 32) and empty["labels"].shape == (0, 2)
    assert caplog.text.count(f"Skipping unreadable image {bad}") == 1
    assert read_unreadable_list(listing) == [str(bad)]
    with pytest.raises(ImageLoadError, match=r"bad\.png"):
        eval_collator_for_config(model_config)(examples)  # the default 0: the first unreadable image raises


def test_image_load_error_from_a_dataloader_worker_is_one_line(tmp_path):
    examples, (bad,) = _examples(tmp_path, num_good=1, bad_names=["bad.png"])
    loader = torch.utils.data.DataLoader(examples, batch_size=2, num_workers=1, collate_fn=MultiLabelCollator(2))
    with pytest.raises(ImageLoadError) as raised:
        list(loader)
    assert str(raised.value).startswith(f"Cannot load image {bad}: ") and "\n" not in str(raised.value)
    assert raised.value.source == str(bad) and "not a recognised image format" in raised.value.reason


def test_unreadable_fraction_is_the_runs_across_dataloader_workers(tmp_path):
    """Two workers each meet one unreadable file among 4 images: per worker that is one file (never stops), for the
    run 2 of 8 = 25% > 20%: the run stops."""
    examples, bad_paths = _examples(tmp_path, num_good=6, bad_names=["x.png", "y.png"])
    ordered = examples[:3] + examples[6:7] + examples[3:6] + examples[7:8]  # a bad image in each batch of 4
    listing = tmp_path / "unreadable.txt"
    collator = MultiLabelCollator(2, max_unreadable_fraction=0.2, unreadable_list=listing)
    loader = torch.utils.data.DataLoader(ordered, batch_size=4, num_workers=2, collate_fn=collator)
    with pytest.raises(TooManyUnreadableImagesError, match=r"^2 of the 8 images seen were unreadable"):
        list(loader)
    tolerant = MultiLabelCollator(2, max_unreadable_fraction=0.3, unreadable_list=tmp_path / "tolerant.txt")
    loader = torch.utils.data.DataLoader(ordered, batch_size=4, num_workers=2, collate_fn=tolerant)
    assert sum(len(batch["labels"]) for batch in loader) == 8


def test_evaluation_and_prototypes_survive_a_batch_of_only_unreadable_images(tmp_path):
    """A batch whose every image is unreadable is empty: evaluation predicts nothing for it, prototypes skip it."""
    from sadcl_hf.training.arguments import SADCLTrainingArguments
    from sadcl_hf.training.prototypes import compute_dataset_prototypes
    from sadcl_hf.training.trainer import SADCLTrainer

    from .conftest import make_tiny_model

    examples, _ = _examples(tmp_path, num_good=2, bad_names=["x.png", "y.png"])
    dataset = datasets.Dataset.from_list(
        examples[2:] + examples[:2], features=multilabel_features(["a", "b"])
    ).cast_column("image", datasets.Image(decode=False))
    model = make_tiny_model(num_labels=2, image_size=32).eval()
    collator = eval_collator_for_config(model.config, max_unreadable_fraction=1.0)
    arguments = SADCLTrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_eval_batch_size=2, report_to=[], use_cpu=True, use_ema=False
    )
    trainer = SADCLTrainer(model=model, args=arguments, data_collator=collator, eval_data_collator=collator)
    prediction = trainer.predict(dataset)
    assert prediction.predictions.shape == (2, 2) and np.array_equal(prediction.label_ids, [[1, 0], [1, 0]])
    prototypes, counts = compute_dataset_prototypes(model, dataset, batch_size=2, max_unreadable_fraction=1.0)
    assert prototypes.shape == model.prototypes.shape[-2:] and counts.shape == (2,)
