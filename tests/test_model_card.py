"""Model cards: rendering, the model-index and parsing back with huggingface_hub."""

from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from transformers import TrainingArguments

import sadcl_hf
from sadcl_hf import COCO_LABELS, SADCLConfig, SADCLForImageClassification
from sadcl_hf.model_card import (
    MODEL_CARD_TEMPLATE_PATH,
    create_model_card,
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
    assert "`resnet101.tv_in1k`](https://huggingface.co/timm/resnet101.tv_in1k) (timm)" in create_model_card(
        SADCLConfig.from_preset("paper-r101-448")
    ).text
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


def test_recorded_results_travel_with_the_saved_model(tiny_model, tmp_path):
    arguments = TrainingArguments(output_dir=str(tmp_path), learning_rate=3e-4, seed=7)
    summary = record_training_summary(
        tiny_model, METRICS, "voc2007", training_args=arguments, stage="baseline", eval_split="test"
    )
    assert summary["metrics"]["map"] == 84.123 and "loss" not in summary["metrics"]
    tiny_model.save_pretrained(tmp_path / "model")
    loaded = SADCLForImageClassification.from_pretrained(tmp_path / "model")
    card = create_model_card(loaded)
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["map"] == 84.12 and len(results) == 8
    assert card.data.datasets == ["voc2007"] and card.data.eval_results[0].dataset_split == "test"
    assert "| learning_rate | 0.0003 |" in card.text and "Recipe stage | baseline" in card.text
    # explicit arguments win over the recorded ones
    card = create_model_card(loaded, metrics={"map": 12.5}, dataset_name="coco2014")
    assert [(r.metric_type, r.metric_value, r.dataset_type) for r in card.data.eval_results] == [
        ("map", 12.5, "coco2014")
    ]


def test_recorded_summary_is_checked(tiny_model):
    with pytest.raises(ValueError, match="dataset_name"):
        record_training_summary(tiny_model, {"map": 1.0}, "")
    tiny_model.config.training_summary = {"mAP": 50.0}
    with pytest.raises(ValueError, match="training_summary"):
        create_model_card(tiny_model)
