import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision.ops.misc import FrozenBatchNorm2d
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    pipeline,
)

from sadcl_hf import COCO_LABELS, SADCLConfig, SADCLForImageClassification, SADCLModel

from .conftest import make_tiny_model


def test_presets_and_overrides():
    paper = SADCLConfig.from_preset("paper-r101-448")
    assert paper.backbone == "resnet101.tv_in1k"
    assert (paper.image_size, paper.hidden_dim, paper.dim_feedforward) == (448, 2048, 8192)
    assert (paper.num_encoder_layers, paper.num_decoder_layers, paper.num_attention_heads) == (1, 2, 4)
    assert paper.label_names == COCO_LABELS and paper.num_labels == 80
    assert paper.problem_type == "multi_label_classification"
    tiny = SADCLConfig.from_preset("tiny", num_labels=3, use_pretrained_backbone=False)
    assert tiny.num_labels == 3 and tiny.use_pretrained_backbone is False
    assert SADCLConfig.from_preset("paper-r101-448", image_size=576).image_size == 576
    with pytest.raises(ValueError, match="unknown SADCL preset"):
        SADCLConfig.from_preset("nope")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_dim": 130}, "divisible by num_attention_heads"),
        ({"objective": "bce"}, "objective"),
        ({"sscl_mode": "fast"}, "sscl_mode"),
        ({"thresholds": [0.5, 0.5]}, "thresholds"),
    ],
)
def test_config_validation_names_the_field(overrides, message):
    with pytest.raises(Exception, match=message):
        SADCLConfig.from_preset("tiny", num_labels=5, **overrides)


def test_forward_shapes_and_attention_maps(tiny_model):
    tiny_model.eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = tiny_model(pixel_values, output_attentions=True)
    assert out.logits.shape == (2, 5)
    assert out.label_features.shape == (2, 5, 128)
    assert out.projected_label_features.shape == (2, 5, 128)
    assert out.loss is None
    # stride 16 (output_stride) on 64 px -> a 4x4 grid; per decoder layer [B, heads, K, 16], a distribution over pixels
    assert len(out.attentions) == 2
    for attention in out.attentions:
        assert attention.shape == (2, 4, 5, 16)
        torch.testing.assert_close(attention.sum(dim=-1), torch.ones(2, 4, 5))
    # logits are the group-wise linear layer applied to the label features (eq. 4)
    expected = (out.label_features * tiny_model.classifier.weight).sum(-1) + tiny_model.classifier.bias
    torch.testing.assert_close(out.logits, expected)


def test_training_forward_returns_objective_and_gradients(tiny_model):
    tiny_model.train()
    labels = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [1, 1, 0, 0, 0]], dtype=torch.float32)
    out = tiny_model(torch.randn(3, 3, 64, 64), labels=labels)
    config = tiny_model.config
    torch.testing.assert_close(
        out.loss,
        out.loss_terms["asl"]
        + config.sscl_weight * out.loss_terms["sscl"]
        + config.pscl_weight * out.loss_terms["pscl"],
    )
    out.loss.backward()
    assert tiny_model.prototypes.grad is not None and tiny_model.prototypes.grad.abs().sum() > 0
    assert tiny_model.classifier.weight.grad.abs().sum() > 0


def test_asl_objective_ignores_contrastive_terms():
    model = make_tiny_model(objective="asl").train()
    out = model(torch.randn(2, 3, 64, 64), labels=torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 1, 1, 0]]))
    assert list(out.loss_terms) == ["asl"]
    torch.testing.assert_close(out.loss, out.loss_terms["asl"])


def test_labels_with_wrong_shape_are_rejected(tiny_model):
    with pytest.raises(ValueError, match="multi-hot of shape"):
        tiny_model(torch.randn(2, 3, 64, 64), labels=torch.ones(2, 4))


def test_memory_bank_starts_from_prototypes_and_keeps_confident_positives(tiny_model):
    model = tiny_model
    bank = model.memory_bank_for_batch(4)
    assert bank.shape == (4, 5, 128)
    torch.testing.assert_close(bank, model.prototypes.detach().expand(4, 5, 128))
    features = torch.randn(4, 5, 128)
    logits = torch.full((4, 5), -5.0)
    logits[0, 1] = 5.0  # positive and confident -> stored
    logits[1, 2] = 5.0  # confident but not a positive label -> ignored
    logits[2, 3] = 0.5  # positive but sigmoid(0.5) < 0.8 -> ignored
    labels = torch.zeros(4, 5)
    labels[0, 1] = labels[2, 3] = 1
    model.update_memory_bank(features, logits, labels)
    expected = model.prototypes.detach().expand(4, 5, 128).clone()
    expected[0, 1] = features[0, 1]
    torch.testing.assert_close(model.memory_bank, expected)
    # a smaller (last) batch uses and updates only the first rows
    logits2 = torch.full((2, 5), 5.0)
    model.update_memory_bank(features[:2] + 1, logits2, torch.ones(2, 5))
    torch.testing.assert_close(model.memory_bank[:2], features[:2] + 1)
    torch.testing.assert_close(model.memory_bank[2:], expected[2:])


def test_training_steps_with_a_smaller_last_batch(tiny_model):
    tiny_model.train()
    for batch_size in (4, 4, 3):
        labels = (torch.rand(batch_size, 5) > 0.5).float()
        out = tiny_model(torch.randn(batch_size, 3, 64, 64), labels=labels)
        out.loss.backward()
    assert tiny_model.memory_bank.shape == (4, 5, 128)


@pytest.fixture(scope="module")
def paper_model():
    return SADCLForImageClassification(SADCLConfig.from_preset("paper-r101-448", use_pretrained_backbone=False))


def test_paper_preset_has_the_official_parameter_count(paper_model):
    outside_backbone = sum(
        p.numel() for name, p in paper_model.named_parameters() if not name.startswith("sadcl.backbone.")
    )
    assert outside_backbone == 157_865_040
    assert paper_model.base_model.backbone is paper_model.sadcl.backbone


def test_paper_preset_freezes_batch_norm_stem_and_first_stage(paper_model):
    body = paper_model.base_model.backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not body.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    assert all(p.requires_grad for p in body.layer4.parameters())


@pytest.mark.parametrize(
    "backbone, kwargs, image_size",
    [
        ("convnext_atto", None, 64),
        ("vit_tiny_patch16_224", {"img_size": 64}, 64),
        ("swin_tiny_patch4_window7_224", None, 224),  # channels-last feature maps
    ],
)
def test_any_timm_backbone(backbone, kwargs, image_size):
    config = SADCLConfig.from_preset(
        "tiny",
        num_labels=3,
        backbone=backbone,
        backbone_kwargs=kwargs,
        image_size=image_size,
        use_pretrained_backbone=False,
    )
    model = SADCLForImageClassification(config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, image_size, image_size), output_attentions=True)
    assert out.logits.shape == (1, 3)
    assert torch.isfinite(out.logits).all()
    assert out.attentions[0].shape[-1] == (image_size // model.base_model.backbone.reduction) ** 2


def test_save_and_load_round_trip(tiny_model_dir):
    files = set(os.listdir(tiny_model_dir))
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= files
    assert {"configuration_sadcl.py", "modeling_sadcl.py", "losses.py"} <= files
    state = load_file(tiny_model_dir / "model.safetensors")
    assert "memory_bank" not in state and "prototypes" in state
    model = AutoModelForImageClassification.from_pretrained(tiny_model_dir).eval()
    assert isinstance(model, SADCLForImageClassification)
    reloaded = SADCLForImageClassification.from_pretrained(tiny_model_dir).eval()
    pixel_values = torch.randn(3, 3, 64, 64)  # any batch size: the checkpoint holds no batch-sized state
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, reloaded(pixel_values).logits)
    assert isinstance(AutoModel.from_pretrained(tiny_model_dir), SADCLModel)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.label_names == [f"class_{i}" for i in range(5)]
    assert config.auto_map == {
        "AutoConfig": "configuration_sadcl.SADCLConfig",
        "AutoModel": "modeling_sadcl.SADCLModel",
        "AutoModelForImageClassification": "modeling_sadcl.SADCLForImageClassification",
    }


def test_from_pretrained_reproduces_saved_logits(tmp_path):
    model = make_tiny_model(seed=3).eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixel_values).logits
    model.save_pretrained(tmp_path)
    loaded = SADCLForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, expected)


def test_remote_code_loads_where_sadcl_hf_is_not_importable(tiny_model_dir):
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["sadcl_hf"] = None  # `import sadcl_hf` now raises ImportError
        try:
            import sadcl_hf
        except ImportError:
            pass
        else:
            raise SystemExit("sadcl_hf should not be importable here")
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
        path = {str(tiny_model_dir)!r}
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        model = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained(path, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            logits = model(torch.zeros(1, 3, 64, 64)).logits
        print(type(config).__name__, type(model).__name__, type(base).__name__, tuple(logits.shape))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SADCLConfig SADCLForImageClassification SADCLModel (1, 5)" in result.stdout


def test_image_processor_and_pipeline_give_sigmoid_scores_with_label_names(tiny_model_dir):
    processor = AutoImageProcessor.from_pretrained(tiny_model_dir)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 64, 64)
    classifier = pipeline("image-classification", model=str(tiny_model_dir), device="cpu")
    predictions = classifier(image, top_k=5)
    assert sorted(p["label"] for p in predictions) == [f"class_{i}" for i in range(5)]
    model = classifier.model
    with torch.no_grad():
        probabilities = torch.sigmoid(model(pixel_values).logits)[0]
    by_label = {p["label"]: p["score"] for p in predictions}
    for i in range(5):
        assert by_label[f"class_{i}"] == pytest.approx(probabilities[i].item(), abs=1e-5)
