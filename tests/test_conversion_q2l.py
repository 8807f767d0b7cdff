"""The Query2Label model zoo converter: parity with the official code for every backbone family (fixtures in
tests/fixtures/q2l, Swin's in ../shared/reference/q2l), full-size architectures on the meta device, safe loading of
released `checkpoint.pkl` files, label names, preprocessing, resolution, remote code, the Hub and stage 2."""

import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms
from transformers import AutoImageProcessor, AutoModelForImageClassification, CvtConfig, pipeline

from sadcl_hf import COCO_LABELS, SADCLConfig, SADCLForImageClassification
from sadcl_hf.hub.conversion import (
    convert_official_checkpoint,
    convert_official_state_dict,
    label_names_for_dataset,
    load_official_checkpoint,
    q2l_zoo_model,
)

from .conftest import FIXTURES_DIR, require_shared_reference, run_script
from .test_hub import client_env, hub, run_python  # noqa: F401  (`hub` is a fixture)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "convert_official_checkpoint.py"
LOCAL_FIXTURES = FIXTURES_DIR / "q2l"
FAMILIES = ["resnet101", "tresnetl", "tresnetl_v2", "swin_l_384", "cvt_w24_384", "cvt_w24_384_inputproj"]
# The reduced CvT fixtures use per-stage heads [1, 2, 4], which no published CvT has (heads are not in the weights).
BACKBONE_HEADS = {"cvt_w24_384": [1, 2, 4], "cvt_w24_384_inputproj": [1, 2, 4]}


def fixture_files(family: str) -> dict:
    """Paths of a family's state dict and outputs (local copy, else the shared reference folder) and its config."""
    folder = LOCAL_FIXTURES
    if not (folder / f"{family}_state_dict.fp16.safetensors").is_file():
        folder = require_shared_reference() / "q2l"
    return {
        "state_dict": folder / f"{family}_state_dict.fp16.safetensors",
        "io": load_file(folder / f"{family}_io.safetensors"),
        "config": json.loads((LOCAL_FIXTURES / f"{family}_config.json").read_text()),
    }


def assert_matches_fixture(model, io, atol=1e-4):
    model.eval()
    with torch.no_grad():
        out = model(io["pixel_values"].float())
    for name in ("logits", "label_features"):
        error = (getattr(out, name) - io[name].float()).abs().max().item()
        assert error <= atol, f"{name}: max abs error {error}"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """family -> a converted model folder (converted once per module)."""
    folders = {}

    def convert(family: str) -> Path:
        if family not in folders:
            files = fixture_files(family)
            folder = tmp_path_factory.mktemp(family)
            convert_official_checkpoint(files["state_dict"], folder, backbone_num_heads=BACKBONE_HEADS.get(family))
            folders[family] = folder
        return folders[family]

    return convert


@pytest.mark.parametrize("family", FAMILIES)
def test_converted_model_reproduces_the_official_outputs(family, converted):
    files = fixture_files(family)
    official_keys = [key for key, _, _ in files["config"]["keys"]]
    assert sorted(official_keys) == sorted(load_file(files["state_dict"]))  # the fixture is the official state dict
    model = AutoModelForImageClassification.from_pretrained(converted(family))
    assert isinstance(model, SADCLForImageClassification)
    assert model.config.image_size == files["config"]["official_args"]["img_size"]
    assert model.config.hidden_dim == files["config"]["official_args"]["hidden_dim"]
    assert model.config.use_input_projection == files["config"]["official_args"]["keep_input_proj"]
    assert_matches_fixture(model, files["io"])
    with torch.no_grad():  # the backbone alone, final norm included, matches the official backbone output
        features = model.sadcl.backbone(files["io"]["pixel_values"].float())
    assert (features - files["io"]["backbone_features"].float()).abs().max().item() <= 1e-4


def test_inferred_architectures():
    expected = {
        "resnet101": ("resnet101.tv_in1k", {"layers": [2, 2, 2, 2], "channels": [4, 8, 16, 32]}),
        "tresnetl": ("tresnet_l", {"layers": [2, 2, 2, 2], "width_factor": 0.0625}),
        "tresnetl_v2": ("tresnet_v2_l", {"layers": [2, 2, 2, 2], "width_factor": 0.125}),
        "cvt_w24_384": ("microsoft/cvt-w24-384-22k", None),
    }
    for family, (backbone, kwargs) in expected.items():
        config, _ = convert_official_state_dict(
            load_file(LOCAL_FIXTURES / f"{family}_state_dict.fp16.safetensors"),
            backbone_num_heads=BACKBONE_HEADS.get(family),
        )
        args = json.loads((LOCAL_FIXTURES / f"{family}_config.json").read_text())["official_args"]
        assert (config.backbone, config.backbone_kwargs) == (backbone, kwargs)
        assert (config.num_labels, config.hidden_dim, config.dim_feedforward) == (
            args["num_class"],
            args["hidden_dim"],
            args["dim_feedforward"],
        )
        assert (config.num_encoder_layers, config.num_decoder_layers) == (args["enc_layers"], args["dec_layers"])
        assert config.image_size == args["img_size"]
    cvt = config.backbone_config
    assert isinstance(cvt, CvtConfig) and not config.use_timm_backbone
    assert (cvt.embed_dim, cvt.depth, cvt.num_heads, cvt.cls_token) == (
        [16, 32, 64],
        [2, 2, 3],
        [1, 2, 4],
        [False, False, True],
    )
    assert cvt.hidden_act == "quick_gelu" and config.backbone_layer_norm
    with pytest.raises(ValueError, match="backbone-num-heads"):  # heads are not in the weights
        convert_official_state_dict(load_file(LOCAL_FIXTURES / "cvt_w24_384_state_dict.fp16.safetensors"))


# The released full-size backbones, as the fixture configs' `full_size` entries describe them.
FULL_SIZE = {
    "resnet101": ({"backbone": "resnet101.tv_in1k"}, 2048),
    "tresnetl": ({"backbone": "tresnet_l", "backbone_frozen_stages": -1}, 2432),
    "tresnetl_v2": ({"backbone": "tresnet_v2_l", "backbone_frozen_stages": -1}, 2048),
    "swin_l_384": (
        {
            "backbone": "swin_large_patch4_window12_384",
            "backbone_kwargs": {"img_size": 384, "dynamic_img_size": True},
            "backbone_layer_norm": True,
            "backbone_frozen_stages": -1,
            "image_size": 384,
        },
        1536,
    ),
    "cvt_w24_384": (
        {
            "backbone": "microsoft/cvt-w24-384-22k",
            "use_timm_backbone": False,
            "backbone_config": CvtConfig(
                embed_dim=[192, 768, 1024], num_heads=[3, 12, 16], depth=[2, 2, 20], hidden_act="quick_gelu"
            ),
            "backbone_layer_norm": True,
            "backbone_frozen_stages": -1,
            "image_size": 384,
        },
        1024,
    ),
}


_INDEX = re.compile(r"\d+")


def _inverse_renaming(official_state: dict, backbone_num_heads) -> dict:
    """How the converter renames each key, learnt from the reduced official state dict: converted key with its numbers
    abstracted -> [(official key pattern, how each official number follows from the converted key's numbers, the
    converted numbers seen)]; several patterns where the official names differ by block (TResNet's anti-aliased
    `conv2.0.0` in a stage's first block, `conv2.0` elsewhere). Tensors are traced by identity through the conversion
    (TResNet's rewritten BatchNorm weights by order)."""
    _, converted = convert_official_state_dict(official_state, backbone_num_heads=backbone_num_heads)
    by_id = {id(value): key for key, value in official_state.items()}
    source = {key: id(value if value._base is None else value._base) for key, value in converted.items()}  # fc.W[0]
    pairs = [(by_id[source[key]], key) for key in converted if source[key] in by_id]
    left_official = [key for key in official_state if key not in {o for o, _ in pairs}]
    left_converted = [key for key in converted if source[key] not in by_id]
    pairs += zip([k for k in left_official if k.endswith(".1.weight")], left_converted)  # |w| + eps BatchNorm weights
    groups: dict = {}
    for official, new in pairs:
        groups.setdefault((_INDEX.sub("#", new), _INDEX.sub("#", official)), []).append(
            ([int(n) for n in _INDEX.findall(new)], [int(n) for n in _INDEX.findall(official)])
        )
    rules: dict = {}
    for (template, pattern), rows in groups.items():
        fills = []
        for j in range(len(rows[0][1])):
            values = [official[j] for _, official in rows]
            if len(set(values)) == 1:
                fills.append(("constant", values[0]))
                continue
            new, official = rows[0]
            fits = [(i, official[j] - new[i]) for i in range(len(new))]
            fits = [(i, d) for i, d in fits if all(o[j] == n[i] + d for n, o in rows)]
            assert fits, (template, pattern, j)
            fills.append(("shifted", fits[0]))
        rules.setdefault(template, []).append((pattern, fills, [new for new, _ in rows]))
    return rules


def _official_name(key: str, rules: dict) -> str:
    """The official name of a converted key: the pattern of the reduced key whose numbers are the same, each number
    clipped to the largest one the reduced model has at its place (a full-size stage has more blocks)."""
    candidates = rules[_INDEX.sub("#", key)]
    numbers = [int(n) for n in _INDEX.findall(key)]
    seen = [row for _, _, rows in candidates for row in rows]
    clipped = [min(n, max(row[i] for row in seen)) for i, n in enumerate(numbers)]
    pattern, fills = next((p, f) for p, f, rows in candidates if clipped in rows)
    values = iter(value if kind == "constant" else numbers[value[0]] + value[1] for kind, value in fills)
    return re.sub("#", lambda _: str(next(values)), pattern)


@pytest.mark.parametrize("family", list(FULL_SIZE))
def test_full_size_architectures_are_inferred_and_every_tensor_fits(family):
    """The released full-size model of each family, on the meta device (no memory): its state dict in the official
    layout (names from the reduced fixture's official key list, shapes from the full-size library model) converts
    back to exactly the full-size model's keys and shapes, with the architecture inferred from the tensors."""
    fields, channels = FULL_SIZE[family]
    keys = json.loads((LOCAL_FIXTURES / f"{family}_config.json").read_text())["keys"]
    reduced = {key: torch.empty(shape, device="meta") for key, shape, _ in keys}
    rules = _inverse_renaming(reduced, BACKBONE_HEADS.get(family))
    config = SADCLConfig(
        **fields, hidden_dim=channels, dim_feedforward=8192, use_pretrained_backbone=False, num_labels=80
    )
    with torch.device("meta"):
        model = SADCLForImageClassification(config)
    assert model.sadcl.backbone.num_channels == channels  # the released width
    expected = {
        key: tuple(value.shape)
        for key, value in model.state_dict().items()
        if not key.startswith(("projector.", "prototypes")) and not key.endswith("num_batches_tracked")
    }
    official = {_official_name(key, rules): torch.empty(shape, device="meta") for key, shape in expected.items()}
    official["fc.W"], official["fc.b"] = official["fc.W"][None], official["fc.b"][None]  # Query2Label's (1, K, d)
    assert {_INDEX.sub("#", key) for key in official} <= {_INDEX.sub("#", key) for key in reduced}
    grid = config.image_size // model.sadcl.backbone.reduction
    official["backbone.1.pe"] = torch.empty(1, channels, grid, grid, device="meta")
    inferred, converted = convert_official_state_dict(official)  # released sizes: no heads given
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected
    for name in ("backbone", "backbone_kwargs", "image_size", "hidden_dim", "dim_feedforward", "backbone_layer_norm"):
        assert getattr(inferred, name) == getattr(config, name), name
    if not config.use_timm_backbone:
        assert inferred.backbone_config.num_heads == [3, 12, 16] and inferred.backbone_config.depth == [2, 2, 20]


def test_full_size_resnet101_is_inferred_and_every_tensor_fits():
    """Q2L-R101-448 at full size, as meta tensors: torchvision names under `backbone.0.body.` (frozen BatchNorm, no
    `num_batches_tracked`), the released head (hidden 2048, FFN 8192, 80 classes, 14x14 position table)."""
    import timm

    with torch.device("meta"):
        torchvision_layout = timm.create_model("resnet101", num_classes=0).state_dict()
    state = {f"backbone.0.body.{k}": v for k, v in torchvision_layout.items() if not k.endswith("num_batches_tracked")}
    d, ff, k = 2048, 8192, 80
    meta = lambda *shape: torch.empty(shape, device="meta")  # noqa: E731
    state["backbone.1.pe"] = meta(1, d, 14, 14)
    for prefix, attention in (("transformer.encoder.layers.0.", "self_attn"),) + tuple(
        (f"transformer.decoder.layers.{i}.", "multihead_attn") for i in range(2)
    ):
        state.update(
            {
                f"{prefix}{attention}.in_proj_weight": meta(3 * d, d),
                f"{prefix}{attention}.in_proj_bias": meta(3 * d),
                f"{prefix}{attention}.out_proj.weight": meta(d, d),
                f"{prefix}{attention}.out_proj.bias": meta(d),
                f"{prefix}linear1.weight": meta(ff, d),
                f"{prefix}linear1.bias": meta(ff),
                f"{prefix}linear2.weight": meta(d, ff),
                f"{prefix}linear2.bias": meta(d),
            }
        )
        norms = ("norm1", "norm2") if attention == "self_attn" else ("norm2", "norm3")
        state.update({f"{prefix}{n}.{p}": meta(d) for n in norms for p in ("weight", "bias")})
    state.update({"transformer.decoder.norm.weight": meta(d), "transformer.decoder.norm.bias": meta(d)})
    state.update({"query_embed.weight": meta(k, d), "fc.W": meta(1, k, d), "fc.b": meta(1, k)})
    config, converted = convert_official_state_dict(state, id2label=dict(enumerate(COCO_LABELS)))
    assert (config.backbone, config.backbone_kwargs, config.image_size) == ("resnet101.tv_in1k", None, 448)
    assert (config.hidden_dim, config.dim_feedforward, config.use_input_projection) == (2048, 8192, False)
    with torch.device("meta"):
        model = SADCLForImageClassification(config)
    expected = {
        key: tuple(value.shape)
        for key, value in model.state_dict().items()
        if not key.startswith(("projector.", "prototypes")) and not key.endswith("num_batches_tracked")
    }
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected
    assert config.label_names == COCO_LABELS
    assert q2l_zoo_model(config).name == "Q2L-R101-448" and q2l_zoo_model(config).reported_map == 84.9


def _q2l_checkpoint(state_dict: dict, path: Path, numpy1_scalar: bool, **extra) -> Path:
    """Writes a released-style `checkpoint.pkl`: {epoch, arch, state_dict (with `module.`), best_mAP (a numpy
    float64, pickled under numpy 1.x's global name when `numpy1_scalar`), optimizer}."""
    checkpoint = {
        "epoch": 41,
        "arch": "Q2L-R101-448",
        "state_dict": {f"module.{key}": value for key, value in state_dict.items()},
        "best_mAP": np.float64(84.9),
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
        **extra,
    }
    if not numpy1_scalar:
        torch.save(checkpoint, path)
        return path
    scalar = np._core.multiarray.scalar

    class Numpy1Pickler(pickle._Pickler):
        """Pickles numpy scalars as numpy 1.x did: the global `numpy.core.multiarray.scalar`."""

        def reducer_override(self, obj):
            if isinstance(obj, np.float64):
                return scalar, (np.dtype("float64"), obj.tobytes())
            return NotImplemented

        def save_global(self, obj, name=None):
            if obj is scalar:
                self.write(pickle.GLOBAL + b"numpy.core.multiarray\nscalar\n")
                self.memoize(obj)
                return
            super().save_global(obj, name)

    class Numpy1PickleModule:
        Pickler = Numpy1Pickler

    torch.save(checkpoint, path, pickle_module=Numpy1PickleModule, pickle_protocol=2)
    return path


def test_released_checkpoint_pkl_converts_with_the_script(tmp_path):
    files = fixture_files("resnet101")
    checkpoint = _q2l_checkpoint(load_file(files["state_dict"]), tmp_path / "checkpoint.pkl", numpy1_scalar=True)
    assert b"numpy.core.multiarray\nscalar" in _pickle_bytes(checkpoint)
    with pytest.raises(pickle.UnpicklingError):  # what a plain weights_only load does with this file
        torch.load(checkpoint, weights_only=True)
    assert float(load_official_checkpoint(checkpoint)["best_mAP"]) == 84.9
    names = tmp_path / "labels.txt"
    names.write_text("\n".join(f"tag {i}" for i in range(6)))
    output = tmp_path / "converted"
    result = run_script("convert_official_checkpoint", [checkpoint, output, "--id2label", names, "--image-size", "96"])
    assert result.returncode == 0, result.stderr
    assert "resnet101.tv_in1k (timm), 6 classes" in result.stdout
    model = AutoModelForImageClassification.from_pretrained(output)
    assert model.config.label_names == [f"tag {i}" for i in range(6)]
    assert_matches_fixture(model, files["io"])
    card = ModelCard.load(output / "README.md")
    assert "84.9" in card.text and "reported by its authors" in card.text and "Licence" in card.text


def _pickle_bytes(path: Path) -> bytes:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return archive.read(next(name for name in archive.namelist() if name.endswith("data.pkl")))


def test_numpy2_checkpoint_and_sadcl_pth_tar_load(tmp_path):
    state_dict = load_file(LOCAL_FIXTURES / "cvt_w24_384_state_dict.fp16.safetensors")
    checkpoint = _q2l_checkpoint(state_dict, tmp_path / "checkpoint.pkl", numpy1_scalar=False)
    loaded = load_official_checkpoint(checkpoint)
    assert loaded["epoch"] == 41 and float(loaded["best_mAP"]) == 84.9
    torch.save({"state_dict": state_dict, "epoch": 3}, tmp_path / "model_best.pth.tar")
    for path in (checkpoint, tmp_path / "model_best.pth.tar"):
        model = convert_official_checkpoint(path, tmp_path / path.stem, backbone_num_heads=[1, 2, 4])
        assert_matches_fixture(model, fixture_files("cvt_w24_384")["io"])


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("legacy_format", [False, True])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, legacy_format):
    marker = tmp_path / "code_ran"
    state_dict = load_file(LOCAL_FIXTURES / "resnet101_state_dict.fp16.safetensors")
    if legacy_format:  # torch's pre-1.6 format, which is not memory-mapped
        checkpoint = tmp_path / "checkpoint.pth"
        torch.save(
            {"state_dict": state_dict, "hook": _RunsCode(marker)}, checkpoint, _use_new_zipfile_serialization=False
        )
    else:
        checkpoint = _q2l_checkpoint(
            state_dict, tmp_path / "checkpoint.pkl", numpy1_scalar=True, hook=_RunsCode(marker)
        )
    with pytest.raises(pickle.UnpicklingError, match="refused to unpickle.*could run code"):
        convert_official_checkpoint(checkpoint, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_dataset_label_names_in_the_released_order(tmp_path):
    from sadcl_hf.data import NUS_WIDE_CONCEPTS, VOC_CLASSES

    assert list(label_names_for_dataset("coco2014").values()) == COCO_LABELS
    assert list(label_names_for_dataset("voc2007").values()) == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert list(label_names_for_dataset("nuswide").values()) == list(NUS_WIDE_CONCEPTS)
    assert len(NUS_WIDE_CONCEPTS) == 81
    with pytest.raises(ValueError, match="vg_category_500|id2label"):
        label_names_for_dataset("vg500")
    with pytest.raises(ValueError, match="80 names but the checkpoint has 6 classes"):
        convert_official_checkpoint(
            LOCAL_FIXTURES / "resnet101_state_dict.fp16.safetensors", tmp_path / "out", dataset="coco2014"
        )
    names = tmp_path / "vg_category_500.json"  # VG-500's {name: class id} file
    names.write_text(json.dumps({f"object {i}": i for i in reversed(range(6))}))
    model = convert_official_checkpoint(
        LOCAL_FIXTURES / "resnet101_state_dict.fp16.safetensors", tmp_path / "vg", id2label_file=names, dataset="vg500"
    )
    assert model.config.label_names == [f"object {i}" for i in range(6)]
    assert "Visual Genome" in ModelCard.load(tmp_path / "vg" / "README.md").text


@pytest.mark.parametrize(
    "orid_norm, mean, std", [(False, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), (True, [0.0] * 3, [1.0] * 3)]
)
def test_saved_processor_is_the_released_inference_preprocessing(tmp_path, orid_norm, mean, std):
    """Query2Label's inference: Resize((img, img)) (PIL bilinear), ToTensor, Normalize (ImageNet, or none with
    `orid_norm`, whichever the backbone's timm default is: TResNet's is mean 0 / std 1)."""
    convert_official_checkpoint(LOCAL_FIXTURES / "tresnetl_state_dict.fp16.safetensors", tmp_path, orid_norm=orid_norm)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8))
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"][0]
    official = transforms.Compose([transforms.Resize((96, 96)), transforms.ToTensor(), transforms.Normalize(mean, std)])
    error = (pixel_values - official(image)).abs()
    assert error.max().item() <= 1.01 / 255 / min(std)  # at most one grey level from PIL's rounding
    assert error.mean().item() < 1e-3


@pytest.mark.parametrize(
    "family, size, grid", [("resnet101", 128, 4), ("swin_l_384", 448, 14), ("cvt_w24_384", 128, 8)]
)
def test_converted_model_runs_at_another_resolution(family, size, grid, converted):
    """Query2Label stored its position table for one size; here it is recomputed for the input's grid."""
    model = AutoModelForImageClassification.from_pretrained(converted(family)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size), output_attentions=True)
    assert out.logits.shape == (1, 6) and torch.isfinite(out.logits).all()
    assert out.attentions[-1].shape[-1] == grid * grid  # one weight per cell of the backbone's grid


def test_remote_code_loads_converted_models_without_sadcl_hf(converted):
    """Either backbone kind (timm: TResNet, transformers: CvT) loads with trust_remote_code where sadcl_hf is not
    importable, reproduces the official logits and tags through the image-classification pipeline."""
    folders = {family: str(converted(family)) for family in ("tresnetl", "cvt_w24_384")}
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["sadcl_hf"] = None
        import torch
        from PIL import Image
        from safetensors.torch import load_file
        from transformers import AutoModelForImageClassification, pipeline
        for family, folder in {folders!r}.items():
            model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            io = load_file(f"{LOCAL_FIXTURES}/{{family}}_io.safetensors")
            with torch.no_grad():
                error = (model(io["pixel_values"].float()).logits - io["logits"].float()).abs().max().item()
            tagger = pipeline("image-classification", model=folder, trust_remote_code=True, device="cpu")
            print(family, "error", error, "labels", len(tagger(Image.new("RGB", (120, 90)), top_k=6)))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for family in folders:
        error, labels = re.search(rf"{family} error (\S+) labels (\d+)", result.stdout).groups()
        assert float(error) <= 1e-4 and labels == "6"


def test_both_pipelines_tag_with_a_converted_model(converted):
    folder = converted("cvt_w24_384")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 90, 3), dtype=np.uint8))
    scores = pipeline("image-classification", model=str(folder), device="cpu")(image, top_k=6)
    assert sorted(p["label"] for p in scores) == [f"LABEL_{i}" for i in range(6)]
    tags = pipeline("multi-label-image-classification", model=str(folder), device="cpu")(image, threshold=0.0)
    assert {p["label"]: p["score"] for p in tags} == pytest.approx({p["label"]: p["score"] for p in scores})


def test_push_to_hub_from_the_converter(tmp_path, hub):  # noqa: F811
    output = tmp_path / "converted"
    env = client_env(hub, tmp_path)
    run_python(
        [
            str(SCRIPT),
            str(LOCAL_FIXTURES / "resnet101_state_dict.fp16.safetensors"),
            str(output),
            "--push-to-hub",
            "tester/q2l-r101-reduced",
        ],
        env,
    )
    script = textwrap.dedent(
        """
        import sys
        sys.modules["sadcl_hf"] = None
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained("tester/q2l-r101-reduced", trust_remote_code=True)
        print("loaded", model.config.backbone, model.config.num_labels)
        """
    )
    result = run_python(["-c", script], env)
    assert "loaded resnet101.tv_in1k 6" in result.stdout


def test_stage_two_trains_from_a_converted_model(tmp_path):
    """`train.py --stage sadcl --model_name_or_path CONVERTED`: a released-style 10-class checkpoint (the CvT
    fixture with its class queries and classifier widened to the digits' 10 classes) converted with the digits'
    names, then prototypes from it and the full objective on digits-mosaic for two steps."""
    from sadcl_hf.training.recipe import parse_arguments, run_training

    state_dict = load_file(LOCAL_FIXTURES / "cvt_w24_384_state_dict.fp16.safetensors")
    generator = torch.Generator().manual_seed(0)
    state_dict["query_embed.weight"] = torch.randn(10, 64, generator=generator)
    state_dict["fc.W"] = torch.randn(1, 10, 64, generator=generator) * 0.1
    state_dict["fc.b"] = torch.zeros(1, 10)
    checkpoint = _q2l_checkpoint(state_dict, tmp_path / "checkpoint.pkl", numpy1_scalar=True)
    names = tmp_path / "digits.json"
    names.write_text(json.dumps([str(i) for i in range(10)]))
    convert_official_checkpoint(
        checkpoint, tmp_path / "converted", id2label_file=names, image_size=64, backbone_num_heads=[1, 2, 4]
    )
    data_options = {"num_train": 16, "num_validation": 8, "num_test": 8, "cache_dir": str(tmp_path / "cache")}
    metrics = run_training(
        *parse_arguments(
            [
                "--config",
                str(ROOT / "configs" / "demo.yaml"),
                "--output_dir",
                str(tmp_path / "stage2"),
                "--stage",
                "sadcl",
                "--model_name_or_path",
                str(tmp_path / "converted"),
                "--max_steps",
                "2",
                "--dataset_options",
                json.dumps(data_options),
                "--per_device_train_batch_size",
                "8",
                "--per_device_eval_batch_size",
                "8",
                "--logging_steps",
                "1",
                "--dataloader_num_workers",
                "0",
            ]
        )
    )
    assert np.isfinite(metrics["eval_ema_map"])
    prototypes = load_file(tmp_path / "stage2" / "prototypes.safetensors")
    assert next(iter(prototypes.values())).shape == (10, 64)
    log = json.loads((tmp_path / "stage2" / "train_log.json").read_text())
    steps = [entry for entry in log if "loss" in entry]
    assert len(steps) == 2 and all({"asl", "sscl", "pscl"} <= set(entry) for entry in steps)
    final = AutoModelForImageClassification.from_pretrained(tmp_path / "stage2" / "model")
    assert final.config.objective == "sadcl" and not final.config.use_timm_backbone


def test_transformers_backbone_config_and_older_configs(tmp_path, tiny_model_dir):
    """DETR-style backbone fields: a `backbone_config` dict becomes its transformers config and survives a save;
    `use_timm_backbone=False` needs one; a config.json written before these fields existed loads as a timm model."""
    config = SADCLConfig.from_preset(
        "tiny",
        use_timm_backbone=False,
        backbone_layer_norm=True,
        backbone_frozen_stages=-1,
        hidden_dim=64,
        backbone_config={
            "model_type": "cvt",
            "embed_dim": [16, 32, 64],
            "num_heads": [1, 2, 4],
            "depth": [2, 2, 3],
            "hidden_act": "quick_gelu",
        },
    )
    assert isinstance(config.backbone_config, CvtConfig)
    config.save_pretrained(tmp_path)
    reloaded = SADCLConfig.from_pretrained(tmp_path)
    assert reloaded.backbone_config.embed_dim == [16, 32, 64] and reloaded.backbone_config.hidden_act == "quick_gelu"
    with pytest.raises(Exception, match="backbone_config must be given exactly when use_timm_backbone is False"):
        SADCLConfig.from_preset("tiny", use_timm_backbone=False)
    with pytest.raises(ValueError, match="backbone_frozen_stages needs a timm backbone"):
        SADCLForImageClassification(SADCLConfig.from_dict({**config.to_dict(), "backbone_frozen_stages": 1}))
    values = json.loads((tiny_model_dir / "config.json").read_text())
    for name in ("use_timm_backbone", "backbone_config", "backbone_layer_norm"):
        values.pop(name)
    old = tmp_path / "old"
    old.mkdir()
    for path in tiny_model_dir.iterdir():
        (old / path.name).write_bytes(path.read_bytes())
    (old / "config.json").write_text(json.dumps(values))
    model = AutoModelForImageClassification.from_pretrained(old).eval()
    assert model.config.use_timm_backbone and model.sadcl.backbone.norm is None
    reference = AutoModelForImageClassification.from_pretrained(tiny_model_dir).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, reference(pixel_values).logits)
