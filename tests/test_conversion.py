import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sadcl_hf import SADCLForImageClassification
from sadcl_hf.hub import conversion
from sadcl_hf.hub.conversion import convert_official_checkpoint, convert_official_state_dict

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_official_checkpoint.py"
RESNET_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "q2l" / "resnet101_state_dict.fp16.safetensors"


@pytest.fixture(scope="module")
def official(reference_dir):
    """The official tiny model (36 MB, in ../shared/reference only: tests using it skip without that folder)."""
    model_dir = reference_dir / "model"
    return {
        "checkpoint": model_dir / "official_tiny_state_dict.fp16.safetensors",
        "io": load_file(model_dir / "official_tiny_io.safetensors"),
        "config": json.loads((model_dir / "official_tiny_config.json").read_text()),
    }


def _assert_matches_official(model, io):
    model.eval()
    with torch.no_grad():
        out = model(io["pixel_values"].float())
        projected_prototypes = model.projector(model.prototypes)
    for name in ("logits", "label_features", "projected_label_features"):
        error = (getattr(out, name) - io[name].float()).abs().max().item()
        assert error < 1e-4, f"{name}: max abs error {error}"
    assert (projected_prototypes - io["projected_prototypes"][0].float()).abs().max().item() < 1e-4


def test_architecture_is_inferred_from_shapes(official):
    state_dict = load_file(official["checkpoint"])
    config, converted = convert_official_state_dict(state_dict)
    reference = official["config"]
    assert config.backbone == "resnet18.tv_in1k"
    assert config.hidden_dim == reference["hidden_dim"]
    assert config.num_encoder_layers == reference["enc_layers"]
    assert config.num_decoder_layers == reference["dec_layers"]
    assert config.dim_feedforward == reference["dim_feedforward"]
    assert config.num_labels == reference["num_class"]
    assert config.image_size == reference["image_size"]
    assert config.use_input_projection is False
    assert "memory_bank" not in converted and not any(key.endswith(".pe") for key in converted)


def test_converted_safetensors_reproduces_official_outputs(official, tmp_path):
    convert_official_checkpoint(official["checkpoint"], tmp_path / "out")
    model = SADCLForImageClassification.from_pretrained(tmp_path / "out")
    _assert_matches_official(model, official["io"])


def test_script_converts_a_pth_with_module_prefix_and_label_file(official, tmp_path):
    state_dict = {f"module.{key}": value for key, value in load_file(official["checkpoint"]).items()}
    checkpoint = tmp_path / "model_best.pth.tar"
    torch.save({"state_dict": state_dict, "epoch": 7}, checkpoint)
    names = tmp_path / "labels.txt"
    names.write_text("cat\ndog\nbird\nfish\nhorse\n")
    output = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(checkpoint), str(output), "--num-heads", "4", "--id2label", str(names)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(output)
    assert model.config.label_names == ["cat", "dog", "bird", "fish", "horse"]
    _assert_matches_official(model, official["io"])
    processor = AutoImageProcessor.from_pretrained(output)
    assert processor.size == {"height": 128, "width": 128}


def test_wrong_label_count_is_rejected(official):
    state_dict = load_file(official["checkpoint"])
    with pytest.raises(ValueError, match="3 names but the checkpoint has 5 classes"):
        convert_official_state_dict(state_dict, id2label={0: "a", 1: "b", 2: "c"})


def test_foreign_and_missing_checkpoints_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="query_embed.weight"):
        convert_official_state_dict({"conv.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        convert_official_checkpoint(tmp_path / "missing.pth", tmp_path / "out")


@pytest.mark.parametrize(
    ("key", "value"), [("query_embed.weight", float("nan")), ("backbone.0.body.conv1.weight", float("inf"))]
)
def test_non_finite_tensors_are_refused_naming_the_tensor(key, value, tmp_path):
    """A diverged run's all-NaN `query_embed` (or one inf in the backbone) is not converted into a model that predicts
    NaN: the converter stops with one line naming the tensor."""
    state_dict = load_file(RESNET_FIXTURE)
    state_dict[key] = state_dict[key].clone()
    state_dict[key].view(-1)[0] = value
    if key == "query_embed.weight":
        state_dict[key].fill_(value)
    with pytest.raises(ValueError, match=rf"tensor '{re.escape(key)}' .* non-finite") as raised:
        convert_official_state_dict(state_dict)
    assert "\n" not in str(raised.value)
    save_file(state_dict, tmp_path / "damaged.safetensors")
    with pytest.raises(ValueError, match=re.escape(key)):
        convert_official_checkpoint(tmp_path / "damaged.safetensors", tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_backbone_family_is_one_table_entry(monkeypatch):
    """Each family is found by its marker key; an unknown backbone's error lists every entry; a new family (here the
    torchvision ResNet under another prefix) converts once its one `BACKBONE_FAMILIES` entry is added."""
    for family in conversion.BACKBONE_FAMILIES:
        assert conversion.backbone_family({family.marker: torch.zeros(1)}) is family
    unknown = {"query_embed.weight": torch.zeros(5, 8), "backbone.0.trunk.conv1.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="unsupported official backbone") as error:
        convert_official_state_dict(unknown)
    assert all(family.marker in str(error.value) for family in conversion.BACKBONE_FAMILIES)

    state_dict = load_file(RESNET_FIXTURE)
    resnet = conversion.backbone_family(state_dict)
    renamed = {key.replace("backbone.0.body.", "backbone.0.trunk."): value for key, value in state_dict.items()}

    def trunk_architecture(trunk_state_dict, image_size, backbone_num_heads):
        body = {key.replace("backbone.0.trunk.", "backbone.0.body."): value for key, value in trunk_state_dict.items()}
        return resnet.architecture(body, image_size, backbone_num_heads)

    trunk = dataclasses.replace(
        resnet, name="trunk", marker="backbone.0.trunk.conv1.weight", prefix="backbone.0.trunk.",
        architecture=trunk_architecture,
    )  # fmt: skip
    monkeypatch.setattr(conversion, "BACKBONE_FAMILIES", (*conversion.BACKBONE_FAMILIES, trunk))
    config, converted = convert_official_state_dict(renamed)
    expected_config, expected = convert_official_state_dict(state_dict)
    assert config.to_diff_dict() == expected_config.to_diff_dict()
    assert converted.keys() == expected.keys() and all(torch.equal(converted[key], expected[key]) for key in expected)
