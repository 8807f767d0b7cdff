"""Model cards: rendering, the model-index and parsing back with huggingface_hub."""

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from transformers import TrainingArguments

import sadcl_hf
from sadcl_hf import COCO_LABELS, SADCLConfig, SADCLForImageClassification
from sadcl_hf.model_card import (
    CARD_DATA_NAME,
    MODEL_CARD_TEMPLATE_PATH,
    SADCLModelCardData,
    add_calibration_to_model_card,
    add_onnx_results_to_model_card,
    create_model_card,
    model_card_data_of,
    record_training_summary,
    save_model_card,
)

METRICS = {
    "eval_map": 84.123,
    "eval_cp": 85.0,
    "eval_cr": 74.5,
    "eval_cf1": 79.4,
    "eval_op": 88.2,
    "eval_or": 77.1,
    "eval_of1": 82.3,
    "eval_of1_top3": 76.25,
    "eval_loss": 0.123,  # not a multi-label metric: left out
    "epoch": 3.0,
}


def test_card_renders_and_parses_back_with_the_metrics_in_the_model_index(tiny_model, tmp_path):
    tiny_model.config.thresholds = [0.4, 0.5, 0.6, 0.5, 0.3]
    path = save_model_card(
        tiny_model,
        tmp_path,
        metrics=METRICS,
        dataset_name="coco2014",
        eval_split="val",
        training_args={"learning_rate": 1e-4, "epochs": 80, "batch_size": 64},
        stage="sadcl",
        model_id="tester/sadcl-tiny",
    )
    assert path == tmp_path / "README.md"
    card = ModelCard.load(path)
    data = card.data
    assert data.model_name == "tester/sadcl-tiny"
    assert data.library_name == "transformers" and data.pipeline_tag == "image-classification"
    assert data.datasets == ["coco2014"] and "multi-label-image-classification" in data.tags
    assert data.base_model is None  # the tiny preset has no pretrained backbone
    results = {result.metric_type: result for result in data.eval_results}
    assert set(results) == {"map", "cp", "cr", "cf1", "op", "or", "of1", "of1_top3"}
    assert results["map"].metric_value == 84.12 and results["map"].metric_name == "mAP"
    assert results["of1_top3"].metric_name == "OF1 (top-3)"
    assert all(r.dataset_split == "val" and r.dataset_name == "MS-COCO 2014" for r in results.values())

    text = card.text
    assert "| mAP | 84.12 |" in text and "| CF1 | 79.40 |" in text
    assert "per-class thresholds stored in the config" in text
    for name in tiny_model.config.label_names:
        assert name in text
    assert '.from_pretrained("tester/sadcl-tiny", trust_remote_code=True)' in text
    assert 'pipeline("multi-label-image-classification", model="tester/sadcl-tiny")' in text
    assert "| learning_rate | 0.0001 |" in text and "| epochs | 80 |" in text
    assert "Recipe stage: sadcl" in text and 'sscl_mode="reference"' in text
    assert "ASL + 100 x SSCL + 50 x PSCL" in text
    assert "Semantic-Aware Dual Contrastive Learning for Multi-label Image Classification" in text
    assert "Ma, Leilei and Sun, Dengdi and Wang, Lei and Zhao, Haifeng and Luo, Bin" in text
    assert f"- sadcl-hf {sadcl_hf.__version__}" in text and "- transformers " in text and "- torch " in text
    assert "Parameters |" in text


def test_card_from_a_config_without_metrics():
    config = SADCLConfig.from_preset("paper-r101-448", objective="asl")
    card = create_model_card(config)
    assert card.data.eval_results is None
    assert card.data.model_name == "sadcl-resnet101"
    assert card.data.base_model == "timm/resnet101.tv_in1k"  # the ImageNet weights the backbone starts from
    assert "No evaluation results were recorded" in card.text
    assert "ASL only" in card.text and "sscl_mode" not in card.text
    assert "Parameters |" not in card.text  # unknown without the model
    assert "80 labels" in card.text and COCO_LABELS[-1] in card.text


def test_card_names_the_backbone_library():
    assert (
        "`resnet101.tv_in1k`](https://huggingface.co/timm/resnet101.tv_in1k) (timm)"
        in create_model_card(SADCLConfig.from_preset("paper-r101-448")).text
    )
    cvt = SADCLConfig(
        use_timm_backbone=False,
        backbone="microsoft/cvt-13",
        backbone_config={"model_type": "cvt"},
        use_pretrained_backbone=False,
        id2label={0: "a", 1: "b", 2: "c"},
    )
    text = create_model_card(cvt).text
    assert "`microsoft/cvt-13` (transformers)" in text and "(timm)" not in text


def test_card_lists_the_usual_training_arguments(tiny_model, tmp_path):
    arguments = TrainingArguments(output_dir=str(tmp_path), learning_rate=3e-4, num_train_epochs=2, seed=7)
    text = create_model_card(tiny_model, training_args=arguments).text
    assert "| learning_rate | 0.0003 |" in text and "| num_train_epochs | 2 |" in text and "| seed | 7 |" in text
    assert "output_dir" not in text and "logging_dir" not in text


def test_metrics_need_a_dataset(tiny_model):
    with pytest.raises(ValueError, match="dataset_name"):
        create_model_card(tiny_model, metrics={"map": 50.0})
    with pytest.raises(ValueError, match="'cf1' must be a number"):
        create_model_card(tiny_model, metrics={"cf1": "high"}, dataset_name="voc2007")


def test_template_is_package_data():
    package_dir = Path(sadcl_hf.__file__).resolve().parent
    assert MODEL_CARD_TEMPLATE_PATH == package_dir / "templates" / "model_card.md"
    assert MODEL_CARD_TEMPLATE_PATH.is_file()
    pointer = package_dir.parent / "model_cards" / "README.md"
    assert "sadcl_hf/templates/model_card.md" in pointer.read_text()


def test_recorded_results_travel_with_the_saved_model_not_its_config(tiny_model, tmp_path):
    arguments = TrainingArguments(output_dir=str(tmp_path), learning_rate=3e-4, seed=7)
    card_data = record_training_summary(
        tiny_model, METRICS, "voc2007", training_args=arguments, stage="baseline", eval_split="test"
    )
    assert tiny_model.model_card_data is card_data
    assert card_data.metrics["map"] == 84.123 and "loss" not in card_data.metrics
    tiny_model.save_pretrained(tmp_path / "model")
    save_model_card(tiny_model, tmp_path / "model")
    assert "training_summary" not in json.loads((tmp_path / "model" / "config.json").read_text())
    assert json.loads((tmp_path / "model" / CARD_DATA_NAME).read_text())["metrics"]["map"] == 84.123
    loaded = SADCLForImageClassification.from_pretrained(tmp_path / "model")
    assert model_card_data_of(loaded) == SADCLModelCardData.load(tmp_path / "model")
    card = create_model_card(loaded)
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["map"] == 84.12 and len(results) == 8
    assert card.data.datasets == ["voc2007"] and card.data.eval_results[0].dataset_split == "test"
    assert "| learning_rate | 0.0003 |" in card.text and "Recipe stage | baseline" in card.text
    # explicit arguments win over the recorded ones, without changing them
    card = create_model_card(loaded, metrics={"map": 12.5}, dataset_name="coco2014")
    assert [(r.metric_type, r.metric_value, r.dataset_type) for r in card.data.eval_results] == [
        ("map", 12.5, "coco2014")
    ]
    assert loaded.model_card_data.metrics["map"] == 84.123


def test_old_folder_with_training_summary_in_config_loads_and_keeps_its_card(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["training_summary"] = {
        "dataset_name": "voc2007", "eval_split": "test", "stage": "sadcl", "metrics": {"map": 71.25},
        "hyperparameters": {"learning_rate": "0.0001"},
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = SADCLForImageClassification.from_pretrained(tmp_path)
    assert not hasattr(loaded.config, "training_summary")
    assert "training_summary" not in loaded.config.to_dict()
    card = create_model_card(loaded)
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("map", 71.25)]
    assert "Recipe stage | sadcl" in card.text and "| learning_rate | 0.0001 |" in card.text
    loaded.save_pretrained(tmp_path / "resaved")
    assert "training_summary" not in json.loads((tmp_path / "resaved" / "config.json").read_text())


def test_card_data_is_checked(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="dataset_name"):
        record_training_summary(tiny_model, {"map": 1.0}, "")
    (tmp_path / CARD_DATA_NAME).write_text(json.dumps({"mAP": 50.0}))
    with pytest.raises(ValueError, match=f"{CARD_DATA_NAME}: expected a mapping with keys among"):
        SADCLModelCardData.load(tmp_path)
    with pytest.raises(TypeError, match="'dataset'"):
        save_model_card(tiny_model, tmp_path, dataset="voc2007")


def test_calibration_and_onnx_results_go_to_the_card_data(tiny_model, tmp_path):
    record_training_summary(tiny_model, {"map": 60.0, "cf1": 50.0}, "voc2007", eval_split="test")
    report = {"num_images": 12, "before": {"map": 60.0, "cf1": 50.0}, "after": {"map": 60.0, "cf1": 55.5}}
    add_calibration_to_model_card(tiny_model, tmp_path, report, dataset="voc2007", split="val")
    add_onnx_results_to_model_card(
        tiny_model, tmp_path, dataset="voc2007", calibration_split="train", eval_split="test", fp32_map=60.0,
        int8_map=59.5,
    )  # fmt: skip
    assert "training_summary" not in tiny_model.config.to_dict()
    loaded = SADCLModelCardData.load(tmp_path)
    assert loaded.calibration["after"]["cf1"] == 55.5 and loaded.onnx["int8_map"] == 59.5
    text = (tmp_path / "README.md").read_text()
    assert "12 images of the\n`val` split of PASCAL VOC 2007" in text and "| CF1 | 50.00 | 55.50 |" in text
    assert "| int8 (`onnx/model_quantized.onnx`) | 59.50 (-0.50 points) |" in text
    assert text.count("## ONNX Runtime") == 1 and "| mAP | 60.00 |" in text
    # a rendering from the loaded folder shows the same card
    model = SADCLForImageClassification(tiny_model.config)
    assert create_model_card(model, card_data=loaded).text == ModelCard.load(tmp_path / "README.md").text
