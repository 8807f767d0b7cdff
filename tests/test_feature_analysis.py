"""Label-feature analysis: the collected features, the separation numbers, the t-SNE figure and its script."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from sklearn.metrics import silhouette_score

from sadcl_hf import SADCLConfig, SADCLForImageClassification
from sadcl_hf.analysis.label_features import (
    analyze_label_features,
    collect_label_features,
    plot_label_features,
    separation_scores,
)
from sadcl_hf.data import load_multilabel_dataset
from sadcl_hf.image_processing import eval_collator_for_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits_test(tmp_path_factory):
    cache = tmp_path_factory.mktemp("digits_cache")
    options = {"num_train": 8, "num_validation": 8, "num_test": 24, "cache_dir": str(cache)}
    return load_multilabel_dataset("digits-mosaic", split="test", **options), options


@pytest.fixture(scope="module")
def digits_model():
    torch.manual_seed(0)
    return SADCLForImageClassification(SADCLConfig.from_preset("tiny", use_pretrained_backbone=False)).eval()


def test_separation_scores_match_the_pairwise_definition():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    classes = rng.integers(0, 4, size=60)
    features = centres[classes] + 0.8 * rng.normal(size=(60, 16))
    scores = separation_scores(features, classes)

    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    cosine = unit @ unit.T
    off_diagonal = ~np.eye(60, dtype=bool)
    same = (classes[:, None] == classes[None, :]) & off_diagonal
    different = classes[:, None] != classes[None, :]
    assert scores["same_class_cosine"] == pytest.approx(cosine[same].mean())
    assert scores["different_class_cosine"] == pytest.approx(cosine[different].mean())
    assert scores["separation"] == pytest.approx(cosine[same].mean() - cosine[different].mean())
    assert scores["silhouette"] == pytest.approx(silhouette_score(features, classes, metric="cosine"))

    perfect = separation_scores(np.array([[1.0, 0], [2.0, 0], [0, 1.0], [0, 3.0]]), np.array([0, 0, 1, 1]))
    assert perfect["separation"] == pytest.approx(1.0) and perfect["silhouette"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        separation_scores(np.ones((3, 2)), np.zeros(3, dtype=int))


def test_collected_features_are_the_models_features_of_present_classes(digits_model, digits_test):
    dataset, _ = digits_test
    collected = collect_label_features(digits_model, dataset, max_features=None, batch_size=5)
    batch = eval_collator_for_config(digits_model.config)([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        outputs = digits_model(pixel_values=batch["pixel_values"])
    image_index, class_index = torch.nonzero(batch["labels"] > 0.5, as_tuple=True)
    np.testing.assert_allclose(collected.features, outputs.label_features[image_index, class_index], atol=1e-5)
    projected = outputs.projected_label_features[image_index, class_index]
    np.testing.assert_allclose(collected.projected, projected, atol=1e-5)
    np.testing.assert_array_equal(collected.classes, class_index.numpy())
    assert collected.num_images == len(dataset) and collected.label_names == [str(i) for i in range(10)]
    np.testing.assert_array_equal(collected.prototypes, digits_model.prototypes.detach().numpy())

    capped = collect_label_features(digits_model, dataset, max_features=7, batch_size=5)
    np.testing.assert_array_equal(capped.features, collected.features[:7])
    assert capped.num_images == int(image_index[6]) + 1


def test_figure_has_three_panels_from_one_joint_embedding(digits_model, digits_test, tmp_path):
    dataset, _ = digits_test
    analysis = analyze_label_features(digits_model, dataset, max_features=40, tsne_max_iter=250)
    assert analysis.embedding.shape == (40 + 10, 2) and analysis.projected_embedding.shape == (40, 2)
    assert {"silhouette", "separation", "projected_silhouette", "projected_separation"} <= set(analysis.scores)
    path = plot_label_features(analysis, tmp_path / "figure.png", title="tiny")
    with PIL.Image.open(path) as figure:
        assert figure.width > 2 * figure.height  # three panels side by side
    without_tsne = analyze_label_features(digits_model, dataset, max_features=40, with_tsne=False)
    assert without_tsne.scores == analysis.scores
    with pytest.raises(ValueError, match="no t-SNE embedding"):
        plot_label_features(without_tsne, tmp_path / "none.png")


def test_visualize_features_script(digits_model, digits_test, tmp_path):
    _, options = digits_test
    model_dir = tmp_path / "sadcl" / "model"
    digits_model.save_pretrained(model_dir)
    command = [
        sys.executable, "scripts/visualize_features.py", "--model", str(model_dir), "--dataset", "digits-mosaic",
        "--split", "test", "--dataset-options", json.dumps(options), "--max-features", "30",
        "--output-dir", str(tmp_path / "out"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "sadcl_tsne.png").stat().st_size > 10_000
    separation = json.loads((tmp_path / "out" / "separation.json").read_text())[str(model_dir)]
    assert f"silhouette {separation['silhouette']:.3f}" in result.stdout
