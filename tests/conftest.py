"""Shared fixtures: tiny random-weight SADCL models (no downloads) and access to the official reference data.

Official reference data
-----------------------
Small official fixtures live in the repository (`tests/fixtures/`, e.g. the loss vectors p01-p07) and are always
tested. Large ones (the paper-scale loss vectors p08, the official tiny model, the Query2Label checkpoints) live in
the workspace folder `../shared/reference/` beside the project root, which a plain clone does not have. A test that
needs that folder uses exactly one of:

* the `reference_dir` fixture, which returns its path::

      def test_converter_parity(reference_dir):
          checkpoint = reference_dir / "model" / "official_tiny_state_dict.fp16.safetensors"

* the marker, for tests or single parameters that read it through `SHARED_REFERENCE_DIR`::

      @pytest.mark.requires_shared_reference
      def test_paper_scale(): ...

      pytest.param("p08_paper_scale_bs32_nc80_d1024", marks=pytest.mark.requires_shared_reference)

Both go through `require_shared_reference()`: without the folder the test is skipped with a reason naming the
missing path. CI (`.ci/run`) sets `SADCL_REQUIRE_SHARED_REFERENCE=1` when the folder is present, which turns that
skip into a failure, so every parity test runs there.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import sadcl_hf  # noqa: F401  (registers the Auto classes)
from sadcl_hf import SADCLConfig, SADCLForImageClassification

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
REQUIRE_SHARED_REFERENCE_ENV = "SADCL_REQUIRE_SHARED_REFERENCE"


def require_shared_reference() -> Path:
    """`SHARED_REFERENCE_DIR` if it exists; otherwise skips the calling test (fails it when
    `SADCL_REQUIRE_SHARED_REFERENCE=1`) with a reason naming the missing folder."""
    if SHARED_REFERENCE_DIR.is_dir():
        return SHARED_REFERENCE_DIR
    reason = f"needs the official reference data folder {SHARED_REFERENCE_DIR} (../shared/reference), which is absent"
    if os.environ.get(REQUIRE_SHARED_REFERENCE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_SHARED_REFERENCE_ENV}=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "requires_shared_reference: reads ../shared/reference (skipped without it; see tests/conftest.py)",
    )


def pytest_runtest_setup(item):
    if item.get_closest_marker("requires_shared_reference") is not None:
        require_shared_reference()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The official reference data folder `../shared/reference` (see the module docstring)."""
    return require_shared_reference()


def run_script(name: str, arguments: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """`python scripts/NAME.py ARGUMENTS` in a fresh process, as a user runs it (tests never import a script)."""
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / f"{name}.py"), *map(str, arguments)],
        capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT,
    )  # fmt: skip


def make_tiny_model(num_labels: int = 5, seed: int = 0, **overrides) -> SADCLForImageClassification:
    torch.manual_seed(seed)
    config = SADCLConfig.from_preset(
        "tiny", id2label={i: f"class_{i}" for i in range(num_labels)}, use_pretrained_backbone=False, **overrides
    )
    return SADCLForImageClassification(config)


def random_image(seed: int, size=(96, 72), mode="RGB") -> PIL.Image.Image:
    """Uniform noise of `size` (width, height) in `mode`, fixed by `seed`."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels).convert(mode)


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


@pytest.fixture(scope="module")
def tagger(tiny_model_dir):
    """The multi-label pipeline on [`tiny_model_dir`] (labels class_0 ... class_4)."""
    from transformers import pipeline

    from sadcl_hf import MULTI_LABEL_TASK

    return pipeline(MULTI_LABEL_TASK, model=str(tiny_model_dir), device="cpu")
