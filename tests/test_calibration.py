"""Per-class threshold calibration, threshold files and scripts/calibrate_thresholds.py."""

import json
import shutil
import warnings

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoConfig, pipeline

from sadcl_hf import MULTI_LABEL_TASK, SADCLConfig, calibrate_thresholds, load_thresholds
from sadcl_hf.analysis.calibration import format_calibration_report, predict_scores
from sadcl_hf.data.common import multilabel_features
from sadcl_hf.evaluation import (
    DEFAULT_THRESHOLD,
    MultiLabelMetrics,
    check_dataset_labels,
    metric_names,
    metric_title,
    multilabel_metrics,
    per_class_f1_thresholds,
    predict_labels,
    sigmoid,
)
from sadcl_hf.image_processing import image_processor_for_config

from .conftest import make_tiny_model, run_script

LABELS = [f"class_{i}" for i in range(5)]


def random_image(seed: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8))


def labelled_dataset(num_images: int = 24, names=LABELS, labels=None) -> datasets.Dataset:
    """Random images with random label sets (1 or 2 classes), or with the given `labels` (class-id lists)."""
    if labels is None:
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
    # one batch, like the reference forward below: float32 logits can differ in the last bit between batch sizes
    report = calibrate_thresholds(model, dataset, batch_size=24)

    processor = image_processor_for_config(model.config)
    pixel_values = processor(images=list(dataset["image"]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():  # the pipeline's scores: float64 sigmoid of the float32 logits
        scores = sigmoid(model(pixel_values).logits.numpy().astype(np.float64))
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
    again = calibrate_thresholds(model, dataset, batch_size=10)
    np.testing.assert_allclose(again["thresholds_before"], thresholds)


def test_report_lists_every_metric_with_its_title():
    model = make_tiny_model(seed=4).eval()
    report = format_calibration_report(calibrate_thresholds(model, labelled_dataset(8), batch_size=8))
    rows = report.splitlines()[1:]
    assert [row[:18].strip() for row in rows] == [metric_title(name) for name in metric_names(top_k=3)]
    assert "CF1-mean (top-3)" in report


def test_pipeline_metrics_and_calibration_agree_at_a_score_equal_to_the_threshold():
    """All three apply `predict_labels` (score >= threshold): a score exactly at its threshold is a prediction."""
    model = make_tiny_model(seed=5).eval()
    with torch.no_grad():  # class 0 scores sigmoid(0) = 0.5 = the default threshold on every image
        model.classifier.weight[0] = 0.0
        model.classifier.bias[0] = 0.0
    processor = image_processor_for_config(model.config)
    tagger = pipeline(MULTI_LABEL_TASK, model=model, image_processor=processor, device="cpu")
    images = [random_image(seed) for seed in range(10)]

    # Calibration's scores are the pipeline's (float64 sigmoid of the float32 logits), batch by batch.
    scores, _ = predict_scores(model, labelled_dataset(10), batch_size=1)
    assert (scores[:, 0] == DEFAULT_THRESHOLD).all()
    predicted = predict_labels(scores, DEFAULT_THRESHOLD)
    assert predicted[:, 0].all() and not predicted.all()
    for row, output in zip(predicted, tagger(images)):
        assert sorted(item["label"] for item in output) == [LABELS[k] for k in np.flatnonzero(row)]

    # The metrics count the same predictions: against them as ground truth, overall precision and recall are 100.
    targets = predicted.astype(np.int64)
    with torch.no_grad():  # one image per forward, like the scores above
        logits = np.concatenate(
            [model(processor(images=image, return_tensors="pt")["pixel_values"]).logits.numpy() for image in images]
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes that no image predicts are left out of the mAP
        from_scores = multilabel_metrics(scores, targets, top_k=None)
        from_logits = MultiLabelMetrics(top_k=None)((logits, targets))
    for results in (from_scores, from_logits):
        assert (results["op"], results["or"]) == (100.0, 100.0)

    # Calibrated thresholds are scores of the data, so they count those scores as predicted: calibrating on
    # these labels reproduces them exactly (class 0 keeps 0.5), in the report and in the pipeline.
    dataset = labelled_dataset(10, labels=[np.flatnonzero(row) for row in predicted])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = calibrate_thresholds(model, dataset, batch_size=1)
    assert model.config.thresholds[0] == DEFAULT_THRESHOLD
    assert (report["after"]["op"], report["after"]["or"]) == (100.0, 100.0)
    for row, output in zip(predicted, tagger(images)):  # the pipeline now applies config.thresholds
        assert sorted(item["label"] for item in output) == [LABELS[k] for k in np.flatnonzero(row)]


def test_calibration_rejects_data_with_other_classes():
    model = make_tiny_model(seed=4)
    with pytest.raises(ValueError, match="calibration data: .* class 0 is 'a' but the model's is 'class_0'"):
        calibrate_thresholds(model, labelled_dataset(6, names=["a", "b", "c", "d", "e"]))
    with pytest.raises(ValueError, match="calibration data: .* 3 classes but the model has 5 labels"):
        calibrate_thresholds(model, labelled_dataset(6, names=["a", "b", "c"]))


def test_check_dataset_labels_accepts_only_the_models_classes_in_its_order():
    config = SADCLConfig.from_preset("tiny", id2label=dict(enumerate(LABELS)))
    check_dataset_labels(LABELS, config)  # matching: no error
    check_dataset_labels(tuple(LABELS), config)
    cases = {
        "wrong count": (
            LABELS[:3],
            r"^voc \(val\): its classes do not match the model's labels \(config\.id2label\): "
            r"3 classes but the model has 5 labels$",
        ),
        "wrong order": (
            [LABELS[1], LABELS[0], *LABELS[2:]],
            r"the same classes in another order: class 0 is 'class_1' but the model's is 'class_0'$",
        ),
        "other names": ([*LABELS[:4], "dog"], r"class 4 is 'dog' but the model's is 'class_4'$"),
    }
    for name, (dataset_names, message) in cases.items():
        with pytest.raises(ValueError, match=message) as error:
            check_dataset_labels(dataset_names, config, what="voc (val)")
        assert "\n" not in str(error.value), name


def test_check_dataset_labels_rejects_placeholder_names_and_names_the_model(tmp_path):
    SADCLConfig.from_preset("tiny", num_labels=3).save_pretrained(tmp_path / "placeholder")  # no names
    config = AutoConfig.from_pretrained(tmp_path / "placeholder")
    assert config.label_names == ["LABEL_0", "LABEL_1", "LABEL_2"]
    with pytest.raises(
        ValueError,
        match=r"model .*placeholder has no label names \(id2label holds LABEL_0 \.\.\. "
        r"LABEL_2\); set id2label",
    ):
        check_dataset_labels(["a", "b", "c"], config)


def test_label_names_have_one_reader_and_the_label_lists_one_home():
    """`SADCLConfig.label_names` is the one way to read the names (checking that id2label names every class); the
    benchmarks' class lists live in configuration_sadcl.py (remote code, presets) and data/ uses them from there."""
    from sadcl_hf import COCO_LABELS, configuration_sadcl, data

    config = SADCLConfig.from_preset("tiny", num_labels=3)
    config.id2label = {0: "a", 2: "c"}
    with pytest.raises(ValueError, match=r"id2label must name every class 0\.\.1; classes \[1\] have no name"):
        _ = config.label_names
    assert COCO_LABELS is configuration_sadcl.COCO_LABELS
    assert data.VOC_CLASSES is configuration_sadcl.VOC_CLASSES
    assert data.NUS_WIDE_CONCEPTS is configuration_sadcl.NUS_WIDE_CONCEPTS
    assert data.dataset_info("coco2014").label_names == tuple(COCO_LABELS)
    assert data.dataset_info("digits-mosaic").label_names is configuration_sadcl.DIGIT_CLASSES
    assert SADCLConfig.from_preset("tiny").label_names == list(configuration_sadcl.DIGIT_CLASSES)


def test_every_caller_uses_the_one_dataset_label_check(tmp_path):
    """Training (a saved model, and the evaluation split), calibration, ONNX evaluation data, compute_prototypes and
    visualize_features all raise the same error (before: five wordings, some as SystemExit/parser errors)."""
    from sadcl_hf.training.arguments import ModelArguments
    from sadcl_hf.training.recipe import build_model

    make_tiny_model().save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="training data: its classes do not match the model .*model's labels"):
        build_model(ModelArguments(stage="sadcl", model_name_or_path=str(tmp_path / "model")), LABELS[::-1])
    options = {"num_train": 2, "num_validation": 2, "num_test": 2, "cache_dir": str(tmp_path / "cache")}
    (tmp_path / "data.json").write_text(json.dumps({"dataset": "digits-mosaic", "dataset_options": options}))
    commands = {
        "compute_prototypes": ["--config", tmp_path / "data.json", "--output", tmp_path / "prototypes.npy"],
        "visualize_features": [
            "--dataset",
            "digits-mosaic",
            "--dataset-options",
            json.dumps(options),
            "--output-dir",
            tmp_path / "figures",
        ],
    }
    for script, arguments in commands.items():
        result = run_script(script, ["--model", tmp_path / "model", "--split", "validation", *arguments])
        assert result.returncode != 0
        assert "digits-mosaic (validation): its classes do not match the model" in result.stderr, result.stderr[-2000:]
        assert "10 classes but the model" in result.stderr and "has 5 labels" in result.stderr


def test_calibrate_script_saves_thresholds_into_the_model_folder(tiny_model_dir, tmp_path):
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

    result = run_script(
        "calibrate_thresholds",
        ["--model", model_dir, "--dataset", "folder", "--root", data, "--split", "validation",
         "--device", "cpu", "--batch-size", "5", "--report", report_path],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = result.stdout
    assert "12 images" in printed and "CF1" in printed and "OF1" in printed

    config = AutoConfig.from_pretrained(model_dir)
    report = json.loads(report_path.read_text())
    assert config.thresholds == pytest.approx(list(report["thresholds"].values()))
    assert len(config.thresholds) == 5
    assert set(config.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
    # the calibration goes to the model card data and its README, not to the config
    card_data = json.loads((model_dir / "model_card_data.json").read_text())
    assert card_data["calibration"]["num_images"] == 12 and card_data["calibration"]["split"] == "validation"
    assert card_data["calibration"]["after"]["cf1"] == pytest.approx(report["after"]["cf1"])
    assert "### Threshold calibration" in (model_dir / "README.md").read_text()
    assert "training_summary" not in json.loads((model_dir / "config.json").read_text())
    tagger = pipeline(MULTI_LABEL_TASK, model=str(model_dir), device="cpu")
    np.testing.assert_allclose(tagger.decision_thresholds(), config.thresholds)
