"""Per-class threshold calibration, threshold files and scripts/calibrate_thresholds.py."""

import importlib.util
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoConfig, pipeline

from sadcl_hf import MULTI_LABEL_TASK, calibrate_thresholds, load_thresholds
from sadcl_hf.data.common import multilabel_features
from sadcl_hf.evaluation import multilabel_metrics, per_class_f1_thresholds
from sadcl_hf.image_processing import image_processor_for_config

from .conftest import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
LABELS = [f"class_{i}" for i in range(5)]


def random_image(seed: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8))


def labelled_dataset(num_images: int = 24, names=LABELS) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    labels = [sorted(rng.choice(len(names), size=rng.integers(1, 3), replace=False)) for _ in range(num_images)]
    labels = [[int(i) for i in ids] for ids in labels]
    images = [random_image(seed) for seed in range(num_images)]
    return datasets.Dataset.from_dict({"image": images, "labels": labels}, features=multilabel_features(names))


def per_class_f1(scores: np.ndarray, targets: np.ndarray, thresholds) -> np.ndarray:
    predicted = scores >= np.asarray(thresholds)
    true_positives = (predicted & (targets > 0)).sum(0)
    return 2 * true_positives / np.maximum(predicted.sum(0) + (targets > 0).sum(0), 1)


def test_load_thresholds_reads_lists_and_label_mappings(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("[0.1, 0.2, 0.3, 0.4, 0.5]")
    assert load_thresholds(path, 5) == [0.1, 0.2, 0.3, 0.4, 0.5]
    path.write_text(json.dumps({"class_3": 0.9, "class_0": 0.1, "class_1": 0.2, "class_2": 0.3, "4": 0.4}))
    assert load_thresholds(path, 5, LABELS) == [0.1, 0.2, 0.3, 0.9, 0.4]


@pytest.mark.parametrize(
    "content, message",
    [
        ("[0.5, 0.5, 0.5]", "has 3 thresholds but the model has 5 labels"),
        ('{"class_0": 0.5, "cat": 0.5}', r"unknown labels \['cat'\]"),
        ('{"class_0": 0.5}', "no threshold for labels"),
        ("[0.5, 0.5, 0.5, 0.5, 1.5]", r"number in \[0, 1\]"),
        ('"0.5"', "must hold a list of 5 numbers"),
        ("[0.5,", "not valid JSON"),
    ],
)
def test_bad_threshold_files_are_rejected_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad_thresholds.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        load_thresholds(path, 5, LABELS)
    assert "bad_thresholds.json" in str(error.value)


def test_calibration_maximises_per_class_f1_and_reports_before_and_after():
    model = make_tiny_model(seed=4).eval()
    dataset = labelled_dataset()
    report = calibrate_thresholds(model, dataset, batch_size=10)

    processor = image_processor_for_config(model.config)
    pixel_values = processor(images=list(dataset["image"]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        scores = torch.sigmoid(model(pixel_values).logits).double().numpy()
    targets = np.zeros_like(scores)
    for row, ids in enumerate(dataset["labels"]):
        targets[row, ids] = 1

    thresholds = np.asarray(model.config.thresholds)
    np.testing.assert_allclose(thresholds, per_class_f1_thresholds(scores, targets), atol=1e-6)
    assert report["num_images"] == 24
    assert list(report["thresholds"]) == LABELS
    assert report["thresholds_before"] == [0.5] * 5
    assert (per_class_f1(scores, targets, thresholds) >= per_class_f1(scores, targets, 0.5) - 1e-9).all()
    assert report["before"] == pytest.approx(multilabel_metrics(scores, targets, threshold=0.5), abs=1e-4)
    assert report["after"] == pytest.approx(multilabel_metrics(scores, targets, threshold=thresholds), abs=1e-4)
    assert report["after"]["map"] == pytest.approx(report["before"]["map"])

    # a second calibration reports the first one's thresholds as "before"
    again = calibrate_thresholds(model, dataset, batch_size=24)
    np.testing.assert_allclose(again["thresholds_before"], thresholds)


def test_calibration_rejects_data_with_other_classes():
    model = make_tiny_model(seed=4)
    with pytest.raises(ValueError, match="differ from the model's id2label"):
        calibrate_thresholds(model, labelled_dataset(6, names=["a", "b", "c", "d", "e"]))
    with pytest.raises(ValueError, match="the dataset has 3 classes but the model has 5 labels"):
        calibrate_thresholds(model, labelled_dataset(6, names=["a", "b", "c"]))


def test_calibrate_script_saves_thresholds_into_the_model_folder(tiny_model_dir, tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    data = tmp_path / "data"
    split = data / "validation"
    split.mkdir(parents=True)
    (data / "classes.txt").write_text("\n".join(LABELS) + "\n")
    rng = np.random.default_rng(1)
    with open(split / "metadata.jsonl", "w") as handle:
        for index in range(12):
            random_image(100 + index).save(split / f"{index}.png")
            names = [LABELS[i] for i in sorted(rng.choice(5, size=2, replace=False))]
            handle.write(json.dumps({"file_name": f"{index}.png", "labels": names}) + "\n")
    report_path = tmp_path / "report.json"

    spec = importlib.util.spec_from_file_location("calibrate_script", ROOT / "scripts" / "calibrate_thresholds.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    status = script.main(
        ["--model", str(model_dir), "--dataset", "folder", "--root", str(data), "--split", "validation",
         "--device", "cpu", "--batch-size", "5", "--report", str(report_path)]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "12 images" in printed and "CF1" in printed and "OF1" in printed

    config = AutoConfig.from_pretrained(model_dir)
    report = json.loads(report_path.read_text())
    assert config.thresholds == pytest.approx(list(report["thresholds"].values()))
    assert len(config.thresholds) == 5
    assert set(config.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
    tagger = pipeline(MULTI_LABEL_TASK, model=str(model_dir), device="cpu")
    np.testing.assert_allclose(tagger.decision_thresholds(), config.thresholds)
