"""transformers backbones the DETR way: a family with an `AutoBackbone` (ResNet, ConvNeXt, ConvNeXtV2, Swin, DINOv2)
runs from a tiny config, saves, loads with `trust_remote_code=True` where sadcl-hf is not installed, and exports
to ONNX with the same logits."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import (
    AutoModelForImageClassification,
    ConvNextConfig,
    ConvNextV2Config,
    Dinov2Config,
    ResNetConfig,
    SwinConfig,
)

from sadcl_hf import SADCLConfig, SADCLForImageClassification

BACKBONES = {
    "resnet": lambda: ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1]),
    "convnext": lambda: ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1]),
    "convnextv2": lambda: ConvNextV2Config(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1]),
    "swin": lambda: SwinConfig(image_size=64, embed_dim=8, depths=[1, 1], num_heads=[2, 2], window_size=4),
    "dinov2": lambda: Dinov2Config(
        image_size=64, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    ),
}
# (channels, stride) of the last feature map
EXPECTED_FEATURES = {
    "resnet": (32, 32),
    "convnext": (32, 32),
    "convnextv2": (32, 32),
    "swin": (16, 8),
    "dinov2": (16, 8),
}


def make_model(family: str) -> SADCLForImageClassification:
    torch.manual_seed(0)
    config = SADCLConfig.from_preset(
        "tiny",
        num_labels=3,
        use_timm_backbone=False,
        backbone_config=BACKBONES[family](),
        use_pretrained_backbone=False,
        backbone_frozen_stages=-1,
    )
    return SADCLForImageClassification(config).eval()


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    folders = {}
    for family in BACKBONES:
        folder = tmp_path_factory.mktemp(family)
        model = make_model(family)
        model.save_pretrained(folder)
        folders[family] = folder
    return folders


@pytest.mark.parametrize("family", sorted(BACKBONES))
def test_transformers_backbone_forward_and_save_load(family, saved_models):
    model = make_model(family)
    backbone = model.sadcl.backbone
    assert backbone.is_transformers_backbone and type(backbone.body).__name__.endswith("Backbone")
    assert (backbone.num_channels, backbone.reduction) == EXPECTED_FEATURES[family]
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(pixel_values, output_attentions=True)
    grid = (64 // backbone.reduction) ** 2
    assert out.logits.shape == (2, 3) and out.attentions[-1].shape[-1] == grid
    with open(saved_models[family] / "config.json") as handle:
        saved = json.load(handle)
    assert saved["backbone_config"]["model_type"] == family and saved["use_timm_backbone"] is False
    reloaded = AutoModelForImageClassification.from_pretrained(saved_models[family]).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, out.logits)


def test_transformers_backbones_load_with_remote_code_without_sadcl_hf(saved_models):
    folders = {family: str(folder) for family, folder in saved_models.items()}
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["sadcl_hf"] = None
        import torch
        from transformers import AutoModelForImageClassification
        for family, folder in {folders!r}.items():
            model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            torch.manual_seed(1)
            with torch.no_grad():
                logits = model(torch.randn(2, 3, 64, 64)).logits
            torch.save(logits, folder + "/remote_logits.pt")
            print(family, "ok")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for _family, folder in saved_models.items():
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        torch.manual_seed(1)
        with torch.no_grad():
            expected = model(torch.randn(2, 3, 64, 64)).logits
        torch.testing.assert_close(torch.load(folder / "remote_logits.pt"), expected)


@pytest.mark.parametrize("family", sorted(BACKBONES))
def test_transformers_backbone_exports_to_onnx(family, saved_models, tmp_path):
    from sadcl_hf.serving.onnx_export import export_onnx, verify_onnx

    model = AutoModelForImageClassification.from_pretrained(saved_models[family]).eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    assert verify_onnx(model, path) <= 1e-4
