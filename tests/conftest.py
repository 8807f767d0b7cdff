"""Shared fixtures: tiny random-weight SADCL models (no downloads) and the shared reference folder."""

from pathlib import Path

import pytest
import torch

import sadcl_hf  # noqa: F401  (registers the Auto classes)
from sadcl_hf import SADCLConfig, SADCLForImageClassification

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        raise FileNotFoundError(f"shared reference data expected at {REFERENCE_DIR}")
    return REFERENCE_DIR


def make_tiny_model(num_labels: int = 5, seed: int = 0, **overrides) -> SADCLForImageClassification:
    torch.manual_seed(seed)
    config = SADCLConfig.from_preset(
        "tiny", id2label={i: f"class_{i}" for i in range(num_labels)}, use_pretrained_backbone=False, **overrides
    )
    return SADCLForImageClassification(config)


@pytest.fixture
def tiny_model() -> SADCLForImageClassification:
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny model folder (weights, config, image processor, remote code)."""
    from sadcl_hf.image_processing import image_processor_for_config

    model = make_tiny_model(seed=1).eval()
    path = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(path)
    image_processor_for_config(model.config).save_pretrained(path)
    return path
