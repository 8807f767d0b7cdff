"""What transformers checks of its own models (`ModelTesterMixin`, `ConfigTester`), applied to both SADCL classes.

Written for this project (not vendored): config round trips, initialisation of weights a checkpoint lacks, save/load,
dtypes, device-map offload, gradient checkpointing, SDPA/eager attention, output conventions, and the memory bank
(training state that only a training forward may touch).
"""

import copy
import json
import logging

import pytest
import timm
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors.torch import load_file, save_file
from torch.profiler import ProfilerActivity, profile
from transformers import ConvNextConfig
from transformers.utils import logging as hf_logging

from sadcl_hf import SADCLConfig, SADCLForImageClassification, SADCLModel
from sadcl_hf.modeling_sadcl import SADCLDecoderLayer, SADCLEncoderLayer

from .conftest import make_tiny_model

MODEL_CLASSES = [SADCLModel, SADCLForImageClassification]


def tiny_config(**overrides) -> SADCLConfig:
    return SADCLConfig.from_preset("tiny", id2label={i: f"class_{i}" for i in range(5)}, **overrides)


def build(model_class, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return model_class(tiny_config(**overrides)).eval()


def main_output(model, outputs) -> torch.Tensor:
    return outputs.logits if isinstance(model, SADCLForImageClassification) else outputs.label_features


def labels_for(batch_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch_size)
    labels = (torch.rand(batch_size, 5, generator=generator) > 0.5).float()
    labels[:, 0] = 1.0  # every class present somewhere keeps PSCL/SSCL on their common path
    return labels


@pytest.fixture(scope="module")
def pixel_values() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------------------ memory bank


@pytest.mark.parametrize("batch_size", [8, 2])  # larger and smaller than the bank
def test_eval_forward_never_touches_the_memory_bank(batch_size):
    model = make_tiny_model()
    model.memory_bank = torch.randn(4, 5, 128, generator=torch.Generator().manual_seed(1))
    before = model.memory_bank.clone()
    model.eval()
    images = torch.randn(batch_size, 3, 64, 64)
    with torch.no_grad():
        loss = model(images, labels=labels_for(batch_size)).loss
        assert torch.equal(model.memory_bank, before)
        # eval_loss does not depend on the bank: the SSCL view is the prototypes
        model.memory_bank = torch.randn(16, 5, 128)
        assert torch.equal(model(images, labels=labels_for(batch_size)).loss, loss)
    assert torch.isfinite(loss)


def test_training_forward_still_reads_and_writes_the_bank():
    model = make_tiny_model(memory_bank_threshold=0.0).train()
    model.memory_bank = torch.randn(4, 5, 128)
    before = model.memory_bank.clone()
    model(torch.randn(2, 3, 64, 64), labels=torch.ones(2, 5))
    assert model.memory_bank.shape == (4, 5, 128)
    assert not torch.equal(model.memory_bank[:2], before[:2]) and torch.equal(model.memory_bank[2:], before[2:])


# ----------------------------------------------------------------------------------------------------------- config


def test_config_keeps_its_problem_type_through_round_trips(tmp_path):
    config = tiny_config(problem_type="multi_label_classification")
    assert SADCLConfig.from_dict(config.to_dict()).problem_type == "multi_label_classification"
    assert json.loads(config.to_json_string())["problem_type"] == "multi_label_classification"
    config.save_pretrained(tmp_path)
    loaded = SADCLConfig.from_pretrained(tmp_path)
    assert loaded.problem_type == "multi_label_classification"
    assert loaded.to_dict() == config.to_dict()
    assert tiny_config().problem_type == "multi_label_classification"  # the default when none is given
    assert SADCLConfig().problem_type == "multi_label_classification"  # transformers builds default configs too


def config_error(**fields) -> str:
    """The one-line reason `SADCLConfig.from_preset("tiny", **fields)` is refused (strict's class validation)."""
    with pytest.raises(StrictDataclassClassValidationError) as raised:
        SADCLConfig.from_preset("tiny", **{"id2label": {i: f"class_{i}" for i in range(5)}, **fields})
    cause = raised.value.__cause__
    assert isinstance(cause, ValueError)
    return str(cause)


@pytest.mark.parametrize("problem_type", ["single_label_classification", "regression"])
def test_unsupported_problem_types_are_refused_at_config_time(problem_type, tmp_path):
    """transformers' `test_problem_types` trains every image classifier with each problem type; SADCL is multi-label
    only, so the other two are refused when the config is made, saved or loaded, not later in `forward`."""
    message = config_error(problem_type=problem_type)
    assert repr(problem_type) in message and "multi_label_classification" in message
    config = tiny_config()
    config.problem_type = problem_type
    with pytest.raises(StrictDataclassClassValidationError, match=problem_type):
        config.save_pretrained(tmp_path)
    tiny_config().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "problem_type": problem_type}))
    with pytest.raises(StrictDataclassClassValidationError, match=problem_type):
        SADCLConfig.from_pretrained(tmp_path)


def test_duplicate_label_names_are_refused_naming_the_name_and_its_classes():
    message = config_error(id2label={0: "cat", 1: "dog", 2: "cat", 3: "bird"})
    assert "'cat'" in message and "[0, 2]" in message
    with pytest.raises(StrictDataclassClassValidationError, match="'dog'"):
        SADCLConfig.from_dict({**tiny_config().to_dict(), "id2label": {"0": "dog", "1": "dog"}})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"hidden_dim": "big"}, "hidden_dim must be a positive integer, got 'big'"),
        ({"hidden_dim": True}, "hidden_dim must be a positive integer, got True"),
        ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
        ({"image_size": 64.0}, "image_size must be a positive integer, got 64.0"),
        ({"backbone_frozen_stages": -2}, "backbone_frozen_stages must be an integer >= -1, got -2"),
        ({"dropout": "0.1"}, "dropout must be a number in [0, 1], got '0.1'"),
        ({"sscl_temperature": 0.0}, "sscl_temperature must be a number > 0, got 0.0"),
        ({"memory_bank_threshold": float("nan")}, "memory_bank_threshold must be a number in [0, 1], got nan"),
        ({"thresholds": "abc"}, "thresholds must be a list of 5 entries, each a number in [0, 1]; got 'abc' (type str"),
        ({"thresholds": [0.5] * 4}, "thresholds must be a list of 5 entries, each a number in [0, 1]; got 4 entries"),
        ({"thresholds": [0.5, 0.5, "x", 0.5, 0.5]}, "entry 2 is 'x' (type str)"),
        ({"image_std": [0.2, 0.0, 0.2]}, "image_std must be a list of 3 entries, each a number > 0; entry 1 is 0.0"),
    ],
)
def test_field_values_are_checked_with_a_message_naming_the_field(fields, expected):
    assert expected in config_error(**fields)


def test_a_saved_config_with_a_bad_value_is_refused_on_load(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "hidden_dim": "big"}))
    with pytest.raises(StrictDataclassClassValidationError, match="hidden_dim must be a positive integer, got 'big'"):
        SADCLConfig.from_pretrained(tmp_path)


def test_config_common_properties():
    config = tiny_config()
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (128, 2, 256)
    assert config.num_attention_heads == 4
    config.hidden_size, config.num_hidden_layers = 64, 3
    assert (config.hidden_dim, config.num_decoder_layers) == (64, 3)
    assert SADCLConfig.from_preset("tiny", hidden_size=96).hidden_dim == 96
    config.num_labels = 3
    assert len(config.id2label) == 3 and len(config.label2id) == 3


# ----------------------------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
@pytest.mark.parametrize("frozen_batch_norm", [False, True])
def test_weights_missing_from_a_checkpoint_are_initialised_and_named(model_class, frozen_batch_norm, tmp_path):
    model = build(model_class, freeze_backbone_batch_norm=frozen_batch_norm)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    backbone_prefix = "backbone." if model_class is SADCLModel else "sadcl.backbone."
    kept = {key: value for key, value in state.items() if not key.startswith(backbone_prefix)}
    dropped = sorted(set(state) - set(kept))
    assert len(dropped) > 50
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})

    logger = hf_logging.get_logger("transformers")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        loaded, info = model_class.from_pretrained(tmp_path, output_loading_info=True)
    finally:
        logger.removeHandler(handler)

    assert sorted(info["missing_keys"]) == dropped
    report = "\n".join(record.getMessage() for record in records if record.levelno >= logging.WARNING)
    assert "MISSING" in report and f"{backbone_prefix}body.conv1" in report

    loaded_state = loaded.state_dict()
    for key, value in loaded_state.items():
        assert value.device.type != "meta", key
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key
    for key, value in kept.items():
        assert torch.equal(loaded_state[key], value), key
    assert_same_init_families(loaded, model, dropped)
    with torch.no_grad():
        assert torch.isfinite(main_output(loaded, loaded.eval()(torch.randn(1, 3, 64, 64)))).all()


def assert_same_init_families(loaded, fresh, keys) -> None:
    """Each tensor `keys` names has the initial value family of the fresh model's: equal where the fresh value is
    one constant (norm weights 1 or, timm's `zero_init_last`, 0; biases and statistics), the same spread (std within
    15 %) and centre where it is random (convolutions, embeddings)."""
    loaded_state, fresh_state = loaded.state_dict(), fresh.state_dict()
    for key in keys:
        value, expected = loaded_state[key].double(), fresh_state[key].double()
        if expected.min() == expected.max():
            assert torch.equal(value, expected), f"{key}: {value.flatten()[:4].tolist()} vs {expected.flatten()[:4]}"
        else:
            assert 0.85 < value.std() / expected.std() < 1.15, f"{key}: std {value.std():.4g} vs {expected.std():.4g}"
            assert (value.mean() - expected.mean()).abs() < 0.2 * expected.std(), key


@pytest.mark.parametrize(
    "backbone",
    ["resnet10t.c3_in1k", pytest.param("convnext_atto", id="convnext_atto-layer-scales"), "transformers-convnext"],
)
def test_can_init_all_missing_backbone_weights_as_the_backbone_does(backbone, tmp_path):
    """transformers' `test_can_init_all_missing_weights`: a checkpoint without its backbone loads with the backbone
    initialised as a freshly built one (timm ResNets zero the last BatchNorm weight of each residual block, ConvNeXt's
    layer scales start at 1e-6; a transformers backbone uses its own `_init_weights`), not with generic values."""
    if backbone == "transformers-convnext":
        backbone_config = ConvNextConfig(hidden_sizes=[32, 48, 64, 96], depths=[1, 1, 2, 1])
        kwargs = {"use_timm_backbone": False, "backbone_config": backbone_config, "backbone_frozen_stages": -1}
    else:
        kwargs = {"backbone": backbone, **({"backbone_kwargs": {}} if backbone.startswith("convnext") else {})}
    model = build(SADCLForImageClassification, freeze_backbone_batch_norm=False, **kwargs)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    kept = {key: value for key, value in state.items() if not key.startswith("sadcl.backbone.")}
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = SADCLForImageClassification.from_pretrained(tmp_path)
    dropped = sorted(set(state) - set(kept))
    assert_same_init_families(loaded, model, dropped)
    if backbone.startswith("resnet"):
        last_norms = [key for key in dropped if key.endswith("bn2.weight") and ".layer" in key]
        assert last_norms and all(not loaded.state_dict()[key].any() for key in last_norms)


def test_model_built_from_a_config_keeps_the_backbone_weights_timm_made():
    config = tiny_config()
    torch.manual_seed(3)
    expected = timm.create_model(config.backbone, features_only=True, out_indices=(-1,), **config.backbone_kwargs)
    torch.manual_seed(3)
    model = SADCLModel(config)
    for key, value in expected.state_dict().items():
        assert torch.equal(model.backbone.body.state_dict()[key], value), key


def test_from_pretrained_never_asks_timm_for_pretrained_weights(tmp_path, monkeypatch):
    build(SADCLForImageClassification).save_pretrained(tmp_path)
    config = SADCLConfig.from_pretrained(tmp_path)
    config.use_pretrained_backbone = True
    config.save_pretrained(tmp_path)
    requested = []
    create_model = timm.create_model

    def recording_create_model(*args, pretrained=False, **kwargs):
        requested.append(pretrained)
        return create_model(*args, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", recording_create_model)
    SADCLForImageClassification.from_pretrained(tmp_path)
    assert requested == [False]


# ------------------------------------------------------------------------------------------- save, load, dtypes


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_save_load_equivalence_with_safetensors(model_class, pixel_values, tmp_path):
    model = build(model_class, seed=1)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "pytorch_model.bin").exists()
    loaded = model_class.from_pretrained(tmp_path).eval()
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(main_output(loaded, loaded(pixel_values)), main_output(model, model(pixel_values)))


def test_from_pretrained_rebuilds_the_backbones_computed_buffers(tmp_path):
    """Swin's relative-position index is a non-persistent buffer: not in the checkpoint, recomputed on load."""
    swin = {"img_size": 64, "window_size": 4, "embed_dim": 32, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)}
    model = build(SADCLForImageClassification, backbone="swin_tiny_patch4_window7_224", backbone_kwargs=swin)
    model.save_pretrained(tmp_path)
    loaded = SADCLForImageClassification.from_pretrained(tmp_path).eval()
    for (name, buffer), (_, expected) in zip(loaded.named_buffers(), model.named_buffers()):
        assert torch.equal(buffer, expected), name
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, model(images).logits)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_from_pretrained_in_half_precision(dtype, pixel_values, tmp_path):
    model = build(SADCLForImageClassification, seed=2)
    model.save_pretrained(tmp_path)
    half = SADCLForImageClassification.from_pretrained(tmp_path, dtype=dtype).eval()
    assert half.dtype == dtype
    assert {p.dtype for p in half.parameters()} == {dtype}
    with torch.no_grad():
        logits = half(pixel_values.to(dtype)).logits
        expected = model(pixel_values).logits
    assert logits.dtype == dtype
    torch.testing.assert_close(logits.float(), expected, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_device_map_with_cpu_and_disk_offload_gives_the_same_outputs(model_class, pixel_values, tmp_path):
    model = build(model_class, seed=4)
    model.save_pretrained(tmp_path / "model")
    with torch.no_grad():
        expected = main_output(model, model(pixel_values))
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    offloaded = model_class.from_pretrained(
        tmp_path / "model",
        device_map="auto",
        max_memory={"cpu": size // 2},
        offload_folder=tmp_path / "offload",
    ).eval()
    assert {"cpu", "disk"} <= set(offloaded.hf_device_map.values())
    with torch.no_grad():
        torch.testing.assert_close(main_output(offloaded, offloaded(pixel_values)), expected)
    if model_class is SADCLForImageClassification:
        assert offloaded.memory_bank.device.type != "meta"
        with torch.no_grad():
            assert torch.isfinite(offloaded(pixel_values, labels=labels_for(3)).loss)


# ------------------------------------------------------------------------------------------ gradient checkpointing


def _gradients(model, images, labels) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(images, labels=labels).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _peak_memory(model, images, labels, path) -> int:
    """Peak bytes of a training step on the CPU (torch profiler's memory timeline)."""
    model.zero_grad()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        model(images, labels=labels).loss.backward()
    prof.export_memory_timeline(str(path), device="cpu")
    _, sizes = json.loads(path.read_text())
    return max(sum(row) for row in sizes)


def test_gradient_checkpointing_gives_the_same_gradients_with_less_memory(tmp_path):
    # Frozen backbone and a 16x16 grid (output stride 8 on 128 px), so the transformer's activations dominate.
    model = make_tiny_model(
        objective="asl",
        dropout=0.0,
        backbone_frozen_stages=4,
        backbone_kwargs={"output_stride": 8},
        dim_feedforward=2048,
        num_encoder_layers=2,
    ).train()
    checkpointed = copy.deepcopy(model)
    checkpointed.activation_checkpointing_enable()
    assert checkpointed.is_activation_checkpointing and not model.is_activation_checkpointing
    layers = [m for m in checkpointed.modules() if isinstance(m, (SADCLEncoderLayer, SADCLDecoderLayer))]
    assert len(layers) == 4 and all(layer.gradient_checkpointing for layer in layers)

    images, labels = torch.randn(2, 3, 128, 128), labels_for(2)
    expected, actual = _gradients(model, images, labels), _gradients(checkpointed, images, labels)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)
    assert _peak_memory(checkpointed, images, labels, tmp_path / "on.json") < _peak_memory(
        model, images, labels, tmp_path / "off.json"
    )


# ------------------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_sdpa_and_eager_attention_are_honoured_and_agree(model_class, pixel_values, tmp_path, monkeypatch):
    build(model_class, seed=5).save_pretrained(tmp_path)
    sdpa = model_class.from_pretrained(tmp_path).eval()
    eager = model_class.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert model_class._supports_sdpa
    assert (sdpa.config._attn_implementation, eager.config._attn_implementation) == ("sdpa", "eager")

    calls = []
    sdpa_function = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa_function(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    with torch.no_grad():
        eager_output = main_output(eager, eager(pixel_values))
        assert calls == []
        sdpa_output = main_output(sdpa, sdpa(pixel_values))
        layers = sdpa.config.num_encoder_layers + sdpa.config.num_decoder_layers
        assert len(calls) == layers
        sdpa(pixel_values, output_attentions=True)  # decoder weights requested: only the encoder keeps SDPA
        assert len(calls) == layers + sdpa.config.num_encoder_layers
    torch.testing.assert_close(sdpa_output, eager_output, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_attentions_and_hidden_states_follow_transformers_conventions(model_class, pixel_values):
    model = build(model_class, seed=6)
    config = model.config
    with torch.no_grad():
        outputs = model(pixel_values, output_attentions=True, output_hidden_states=True)
        plain = model(pixel_values)
    assert plain.attentions is None and plain.hidden_states is None
    grid = (64 // model.base_model.backbone.reduction) ** 2
    assert len(outputs.attentions) == config.num_hidden_layers
    for attention in outputs.attentions:
        assert attention.shape == (3, config.num_attention_heads, config.num_labels, grid)
        torch.testing.assert_close(attention.sum(-1), torch.ones(3, config.num_attention_heads, config.num_labels))
    assert len(outputs.hidden_states) == config.num_hidden_layers + 1
    assert all(state.shape == (3, config.num_labels, config.hidden_size) for state in outputs.hidden_states)
    torch.testing.assert_close(main_output(model, outputs), main_output(model, plain))

    model.set_attn_implementation("eager")  # transformers allows `config.output_attentions` with eager only
    config.output_attentions = True  # the config default is read when the argument is not given
    with torch.no_grad():
        assert len(model(pixel_values).attentions) == config.num_hidden_layers


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_return_dict_false_gives_the_same_values_as_a_tuple(model_class, pixel_values):
    model = build(model_class, seed=7)
    with torch.no_grad():
        outputs = model(pixel_values, output_attentions=True)
        as_tuple = model(pixel_values, output_attentions=True, return_dict=False)
    assert isinstance(as_tuple, tuple)
    expected = outputs.to_tuple()
    assert len(as_tuple) == len(expected)
    for value, reference in zip(as_tuple, expected):
        if isinstance(value, tuple):
            for item, reference_item in zip(value, reference):
                torch.testing.assert_close(item, reference_item)
        else:
            torch.testing.assert_close(value, reference)


# ---------------------------------------------------------------------------------------------- common properties


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_common_model_properties(model_class):
    model = build(model_class, backbone_frozen_stages=0)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert model.num_parameters(only_trainable=True) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert model.num_parameters(only_trainable=True) < model.num_parameters()
    assert not model.can_generate()
    with pytest.raises(NotImplementedError):
        model.get_input_embeddings()
    module_classes = {type(module).__name__ for module in model.modules()}
    assert set(model._no_split_modules) <= module_classes
    assert model.main_input_name == "pixel_values"


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_batching_equivalence_and_train_eval_equality_without_dropout(model_class, pixel_values):
    model = build(model_class, seed=8, dropout=0.0, freeze_backbone_batch_norm=True)
    with torch.no_grad():
        batched = main_output(model, model(pixel_values))
        singles = torch.cat([main_output(model, model(image[None])) for image in pixel_values])
        torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(main_output(model, model(pixel_values)), batched, atol=0, rtol=0)
        model.train()  # no dropout, frozen BatchNorm: training mode computes the same function
        torch.testing.assert_close(main_output(model, model(pixel_values)), batched, atol=1e-6, rtol=1e-6)
