"""Conversion of official SADCL (github.com/yu-gi-oh-leilei/SADCL) and Query2Label (github.com/SlongLiu/query2labels)
checkpoints to sadcl-hf folders.

Both releases share Query2Label's key layout: `backbone.0.*` (the backbone), `backbone.1.pe` (a sine position table for
one image size, recomputed here for any size), `input_proj.*`, `transformer.*`, `query_embed.weight`, `fc.W`/`fc.b`,
and for SADCL `proj_head.*`, `prototype` and `memorybank`. The backbone family and every size are inferred from the
tensors; the backbone's weights are renamed to the library model with the same weights layout (one `BACKBONE_FAMILIES`
entry per family):

| family (Query2Label zoo) | library model | renaming |
|---|---|---|
| torchvision ResNet (Q2L-R101-448/576) | timm `resnet*` (`.tv_in1k` layout) | prefix only |
| TResNet (Q2L-TResL-448, -TResL_22k-448) | timm `tresnet_l`/`_xl`/`_v2_l` | timm's `checkpoint_filter_fn` |
| Swin (Q2L-SwinL-384) | timm `swin_large_patch4_window12_384` | timm's `checkpoint_filter_fn` + final norm |
| CvT (Q2L-CvT_w24-384) | transformers `CvtModel` (QuickGELU) | transformers' CvT conversion + final norm |
"""

from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..configuration_sadcl import SADCLConfig

__all__ = [
    "BACKBONE_FAMILIES",
    "BackboneFamily",
    "Q2L_MODEL_ZOO",
    "backbone_family",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "label_names_for_dataset",
    "load_official_checkpoint",
    "load_official_state_dict",
    "q2l_zoo_model",
]

# Where each release's code and weights come from, and what its licence allows (neither repository has a licence
# file, so the card says so instead of naming one).
_SOURCES = {
    "query2label": (
        "https://github.com/SlongLiu/query2labels",
        "The Query2Label repository (github.com/SlongLiu/query2labels) publishes its code and checkpoints without a "
        "licence file; ask its authors before redistributing the weights.",
    ),
    "sadcl": (
        "https://github.com/yu-gi-oh-leilei/SADCL",
        "The SADCL repository (github.com/yu-gi-oh-leilei/SADCL) publishes its code without a licence file; ask its "
        "authors before redistributing weights trained with it.",
    ),
}


@dataclass(frozen=True)
class ZooModel:
    """A released Query2Label checkpoint: its name, backbone (timm/transformers name as converted), training size
    and COCO mAP as reported by its authors."""

    name: str
    backbone: str
    image_size: int
    reported_map: float


Q2L_MODEL_ZOO = (
    ZooModel("Q2L-R101-448", "resnet101.tv_in1k", 448, 84.9),
    ZooModel("Q2L-R101-576", "resnet101.tv_in1k", 576, 86.5),
    ZooModel("Q2L-TResL-448", "tresnet_l", 448, 87.3),
    ZooModel("Q2L-TResL_22k-448", "tresnet_v2_l", 448, 89.2),
    ZooModel("Q2L-SwinL-384", "swin_large_patch4_window12_384", 384, 90.5),
    ZooModel("Q2L-CvT_w24-384", "microsoft/cvt-w24-384-22k", 384, 91.3),
)

# Official head key -> sadcl-hf key (first match wins); `None` drops the tensor. The backbone is renamed per family.
_KEY_RULES: list[tuple[str, str | None]] = [
    (r"^backbone\.1\.pe$", None),  # the sine position encoding is recomputed for the input's grid
    (r"^memorybank$", None),  # training state, restarted from the prototypes
    (r"^input_proj\.", "sadcl.input_projection."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm1\.", r"sadcl.transformer.encoder.layers.\1.self_attn_norm."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm2\.", r"sadcl.transformer.encoder.layers.\1.ffn_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.multihead_attn\.", r"sadcl.transformer.decoder.layers.\1.cross_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", r"sadcl.transformer.decoder.layers.\1.cross_attn_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm3\.", r"sadcl.transformer.decoder.layers.\1.ffn_norm."),
    (r"^transformer\.", "sadcl.transformer."),
    (r"^query_embed\.", "sadcl.query_embed."),
    (r"^fc\.W$", "classifier.weight"),
    (r"^fc\.b$", "classifier.bias"),
    (r"^proj_head\.layers\.0\.", "projector.0."),
    (r"^proj_head\.layers\.1\.", "projector.2."),
    (r"^prototype$", "prototypes"),
]

# torchvision ResNets (blocks per stage, bottleneck?) -> timm models with the same weights layout.
_RESNETS = {
    ((2, 2, 2, 2), False): "resnet18.tv_in1k",
    ((3, 4, 6, 3), False): "resnet34.tv_in1k",
    ((3, 4, 6, 3), True): "resnet50.tv_in1k",
    ((3, 4, 23, 3), True): "resnet101.tv_in1k",
    ((3, 8, 36, 3), True): "resnet152.tv_in1k",
}
_RESNET_PLANES = (64, 128, 256, 512)
# timm TResNets: (blocks per stage, stem width int(64 * width_factor), v2) -> name.
_TRESNETS = {
    ((3, 4, 11, 3), 64, False): "tresnet_m",
    ((4, 5, 18, 3), 76, False): "tresnet_l",
    ((4, 5, 24, 3), 83, False): "tresnet_xl",
    ((3, 4, 23, 3), 64, True): "tresnet_v2_l",
}
_SWIN_LARGE = {"embed_dim": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48), "window_size": 12}
# CvT's per-stage heads are not stored in the weights: those of the published models, by per-stage width.
_CVT_HEADS = {(64, 192, 384): [1, 3, 6], (192, 768, 1024): [3, 12, 16]}
# Official CvT (microsoft/CvT) key -> transformers `CvtModel` key, as transformers' CvT conversion script.
_CVT_RULES: list[tuple[str, Any]] = [  # replacement: a template or a function of the match
    (r"^stage(\d+)\.patch_embed\.proj\.", r"encoder.stages.\1.embedding.convolution_embeddings.projection."),
    (r"^stage(\d+)\.patch_embed\.norm\.", r"encoder.stages.\1.embedding.convolution_embeddings.normalization."),
    (r"^stage(\d+)\.cls_token$", r"encoder.stages.\1.cls_token"),
    (
        r"^stage(\d+)\.blocks\.(\d+)\.attn\.conv_proj_(q|k|v)\.(conv|bn)\.",
        lambda m: (
            f"encoder.stages.{m[1]}.layers.{m[2]}.attention.attention.convolution_projection_"
            f"{_QKV[m[3]]}.convolution_projection.{'convolution' if m[4] == 'conv' else 'normalization'}."
        ),
    ),
    (
        r"^stage(\d+)\.blocks\.(\d+)\.attn\.proj_(q|k|v)\.",
        lambda m: f"encoder.stages.{m[1]}.layers.{m[2]}.attention.attention.projection_{_QKV[m[3]]}.",
    ),
    (r"^stage(\d+)\.blocks\.(\d+)\.attn\.proj\.", r"encoder.stages.\1.layers.\2.attention.output.dense."),
    (r"^stage(\d+)\.blocks\.(\d+)\.norm1\.", r"encoder.stages.\1.layers.\2.layernorm_before."),
    (r"^stage(\d+)\.blocks\.(\d+)\.norm2\.", r"encoder.stages.\1.layers.\2.layernorm_after."),
    (r"^stage(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"encoder.stages.\1.layers.\2.intermediate.dense."),
    (r"^stage(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"encoder.stages.\1.layers.\2.output.dense."),
]
_QKV = {"q": "query", "k": "key", "v": "value"}


# ----------------------------------------------------------------------------------------------------------- loading
def _numpy_pickle_globals() -> list:
    """The globals a `checkpoint.pkl` needs beyond tensors: `best_mAP` is a numpy float64, pickled as
    `numpy.core.multiarray.scalar` (numpy 1.x) or `numpy._core.multiarray.scalar` (numpy 2) plus its dtype. None of
    them runs code."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed = [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    dtype_classes = [type(np.dtype(name)) for name in ("float64", "float32", "float16", "int64", "int32", "bool")]
    allowed += [(cls, f"numpy.dtypes.{cls.__name__}") for cls in dtype_classes]
    return allowed


def load_official_checkpoint(path: str | Path) -> dict[str, Any]:
    """Reads an official checkpoint without running code from it.

    `.pth`/`.pth.tar`/`.pkl` files are pickles: they are read with `torch.load(weights_only=True)`, which accepts only
    tensors and plain containers, plus an allow-list of numpy scalar globals (Query2Label's `best_mAP`); anything else
    (e.g. an object whose unpickling would call a function) is refused with `pickle.UnpicklingError`. Tensors are
    memory-mapped, so entries that are not needed (the optimizer state) are never read into memory. `.safetensors`
    files hold a bare state dict.

    Returns the checkpoint as a dict (a bare state dict comes back as `{"state_dict": ...}`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {"state_dict": load_file(str(path))}
    with torch.serialization.safe_globals(_numpy_pickle_globals()):
        try:
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):  # the legacy (non-zip) format cannot be memory-mapped
                    raise
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise pickle.UnpicklingError(
                f"{path}: refused to unpickle: the file holds objects other than tensors, plain containers and numpy "
                f"scalars, and loading them could run code. Only weights are read from official checkpoints. "
                f"torch says: {str(error).splitlines()[0]}"
            ) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a dict (a state dict or a checkpoint), got {type(checkpoint).__name__}")
    if not any(key in checkpoint for key in ("state_dict", "model")):
        checkpoint = {"state_dict": checkpoint}
    return checkpoint


def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official checkpoint (`load_official_checkpoint`), DataParallel's `module.` removed."""
    checkpoint = load_official_checkpoint(path)
    state_dict = checkpoint.get("state_dict", checkpoint.get("model"))
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path}: the 'state_dict' entry is not a dict of tensors")
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


# ------------------------------------------------------------------------------------------------- architecture
def _count(state_dict: dict, pattern: str) -> int:
    """1 + the largest integer the regex group of `pattern` matches in a key (0 if none)."""
    indices = {int(m.group(1)) for key in state_dict if (m := re.match(pattern, key))}
    return max(indices) + 1 if indices else 0


def _resnet_architecture(state_dict: dict, image_size: int, backbone_num_heads: list[int] | None) -> dict[str, Any]:
    """torchvision ResNet under `backbone.0.body.` -> timm `resnet*` fields; non-standard depths/widths (the reduced
    fixtures) go through `backbone_kwargs` (`layers`, `channels`)."""
    prefix = "backbone.0.body."
    blocks = tuple(_count(state_dict, rf"{prefix}layer{i}\.(\d+)\.") for i in range(1, 5))
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state_dict
    planes = tuple(int(state_dict[f"{prefix}layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5))
    name = _RESNETS.get((blocks, bottleneck))
    kwargs = None
    if name is None or planes != _RESNET_PLANES:
        name = "resnet101.tv_in1k" if bottleneck else "resnet18.tv_in1k"
        kwargs = {"layers": list(blocks), "channels": list(planes)}
    return {"backbone": name, "backbone_kwargs": kwargs}


def _tresnet_architecture(state_dict: dict, image_size: int, backbone_num_heads: list[int] | None) -> dict[str, Any]:
    """Official TResNet under `backbone.0.body.body.` -> timm `tresnet_*` fields (v2: Bottleneck blocks in every
    stage); other sizes through `backbone_kwargs` (`layers`, `width_factor`)."""
    prefix = "backbone.0.body.body."
    blocks = tuple(_count(state_dict, rf"{prefix}layer{i}\.(\d+)\.") for i in range(1, 5))
    v2 = any(key.startswith(f"{prefix}layer1.0.conv3.") for key in state_dict)
    stem = int(state_dict[f"{prefix}conv1.0.weight"].shape[0])
    name = _TRESNETS.get((blocks, stem, v2))
    kwargs = None
    if name is None:
        name = "tresnet_v2_l" if v2 else "tresnet_l"
        kwargs = {"layers": list(blocks), "width_factor": stem / 64}
    return {"backbone": name, "backbone_kwargs": kwargs, "backbone_frozen_stages": -1}


def _swin_architecture(state_dict: dict, image_size: int, backbone_num_heads: list[int] | None) -> dict[str, Any]:
    """Official Swin under `backbone.0.` -> timm `swin_large_patch4_window12_384` with the sizes read from the
    tensors (heads from the relative-position tables, window from their length) and the final norm. The official
    model only runs at its training size; `dynamic_img_size` builds the attention masks for any input size."""
    prefix = "backbone.0."
    depths = tuple(
        _count(state_dict, rf"{prefix}layers\.{i}\.blocks\.(\d+)\.")
        for i in range(_count(state_dict, rf"{prefix}layers\.(\d+)\."))
    )
    tables = [state_dict[f"{prefix}layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(len(depths))]
    sizes = {
        "embed_dim": int(state_dict[f"{prefix}patch_embed.proj.weight"].shape[0]),
        "depths": depths,
        "num_heads": tuple(int(table.shape[1]) for table in tables),
        "window_size": (math.isqrt(tables[0].shape[0]) + 1) // 2,
    }
    kwargs = {key: list(value) if isinstance(value, tuple) else value for key, value in sizes.items()}
    kwargs = {"img_size": image_size, "dynamic_img_size": True, **({} if sizes == _SWIN_LARGE else kwargs)}
    return {
        "backbone": "swin_large_patch4_window12_384",
        "backbone_kwargs": kwargs,
        "backbone_layer_norm": True,
        "backbone_frozen_stages": -1,
    }


def _cvt_architecture(state_dict: dict, image_size: int, backbone_num_heads: list[int] | None) -> dict[str, Any]:
    """Official CvT under `backbone.0.` -> a transformers `CvtConfig` (QuickGELU) with the final norm. The per-stage
    heads are not in the weights: `backbone_num_heads`, else those of the published CvT of that width."""
    from transformers import CvtConfig

    prefix = "backbone.0."
    num_stages = _count(state_dict, rf"{prefix}stage(\d+)\.")
    embeddings = [state_dict[f"{prefix}stage{i}.patch_embed.proj.weight"] for i in range(num_stages)]
    embed_dim = [int(weight.shape[0]) for weight in embeddings]
    if backbone_num_heads is None:
        backbone_num_heads = _CVT_HEADS.get(tuple(embed_dim))
        if backbone_num_heads is None:
            raise ValueError(
                f"CvT with stage widths {embed_dim} is not a published size, and its per-stage heads are not stored in "
                "the weights: pass backbone_num_heads (--backbone-num-heads), e.g. 3,12,16 for CvT-w24"
            )
    if len(backbone_num_heads) != num_stages:
        raise ValueError(f"backbone_num_heads needs {num_stages} entries (one per CvT stage), got {backbone_num_heads}")
    # Patch strides (4, 2, 2) and paddings (2, 1, 1) are not in the weights; every published CvT uses CvtConfig's.
    backbone_config = CvtConfig(
        embed_dim=embed_dim,
        num_heads=list(backbone_num_heads),
        depth=[_count(state_dict, rf"{prefix}stage{i}\.blocks\.(\d+)\.") for i in range(num_stages)],
        patch_sizes=[int(weight.shape[-1]) for weight in embeddings],
        mlp_ratio=[
            state_dict[f"{prefix}stage{i}.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim[i] for i in range(num_stages)
        ],
        cls_token=[f"{prefix}stage{i}.cls_token" in state_dict for i in range(num_stages)],
        drop_path_rate=[0.0] * num_stages,
        hidden_act="quick_gelu",
    )
    return {
        "backbone": "microsoft/cvt-w24-384-22k",
        "use_timm_backbone": False,
        "backbone_config": backbone_config,
        "backbone_layer_norm": True,
        "backbone_frozen_stages": -1,
    }


def _same_keys(backbone_state: dict, config: SADCLConfig) -> dict[str, torch.Tensor]:
    """torchvision ResNet names are timm's `resnet*` names already."""
    return backbone_state


def _timm_filter_keys(module: str) -> Callable[[dict, SADCLConfig], dict[str, torch.Tensor]]:
    """Renaming by timm's `checkpoint_filter_fn` of `timm.models.<module>`, which maps the official layout of that
    family to timm's (it reads the full model's shapes, built here on the meta device)."""

    def official_keys(backbone_state: dict, config: SADCLConfig) -> dict[str, torch.Tensor]:
        import timm

        filter_fn = getattr(timm.models, module).checkpoint_filter_fn
        with torch.device("meta"):
            full_model = timm.create_model(config.backbone, pretrained=False, **(config.backbone_kwargs or {}))
        return filter_fn(backbone_state, full_model)

    return official_keys


def _cvt_keys(backbone_state: dict, config: SADCLConfig) -> dict[str, torch.Tensor]:
    """Official CvT names -> transformers `CvtModel` names (`_CVT_RULES`)."""
    renamed = {}
    for key, value in backbone_state.items():
        for pattern, replacement in _CVT_RULES:
            if re.search(pattern, key):
                renamed[re.sub(pattern, replacement, key)] = value
                break
        else:
            raise ValueError(f"unexpected tensor in the official CvT backbone: 'backbone.0.{key}'")
    return renamed


@dataclass(frozen=True)
class BackboneFamily:
    """What the converter knows of one official backbone family; adding a family is one entry of
    `BACKBONE_FAMILIES` (and a parity fixture under tests/fixtures/q2l).

    Args:
        name: the family's name (`"resnet"`, ...).
        description: how error messages name it (`"a torchvision ResNet"`).
        marker: a key only this family's official state dicts hold.
        prefix: the prefix of its tensors in the official state dict (removed before `official_keys`).
        architecture: `(state_dict, image_size, backbone_num_heads) -> SADCLConfig` backbone fields, read from the
            tensors (`backbone_num_heads`: per-stage heads, for families that do not store them).
        official_keys: `(backbone tensors without prefix, config) -> the same tensors under the full library
            model's names` (timm / transformers).
        stride: the backbone's output stride: the official position table `backbone.1.pe` covers image_size/stride.
    """

    name: str
    description: str
    marker: str
    prefix: str
    architecture: Callable[[dict, int, list[int] | None], dict[str, Any]]
    official_keys: Callable[[dict, SADCLConfig], dict[str, torch.Tensor]] = _same_keys
    stride: int = 32

    def detect(self, state_dict: dict) -> bool:
        """Whether `state_dict` is an official checkpoint of this family."""
        return self.marker in state_dict


BACKBONE_FAMILIES: tuple[BackboneFamily, ...] = (
    BackboneFamily(
        "resnet", "a torchvision ResNet", "backbone.0.body.conv1.weight", "backbone.0.body.", _resnet_architecture
    ),
    BackboneFamily(
        "tresnet",
        "a TResNet",
        "backbone.0.body.body.conv1.0.weight",
        "backbone.0.body.",
        _tresnet_architecture,
        _timm_filter_keys("tresnet"),
    ),
    BackboneFamily(
        "swin",
        "a Swin",
        "backbone.0.patch_embed.proj.weight",
        "backbone.0.",
        _swin_architecture,
        _timm_filter_keys("swin_transformer"),
    ),
    BackboneFamily(
        "cvt",
        "a CvT",
        "backbone.0.stage0.patch_embed.proj.weight",
        "backbone.0.",
        _cvt_architecture,
        _cvt_keys,
        stride=16,
    ),
)


def backbone_family(state_dict: dict) -> BackboneFamily:
    """The entry of `BACKBONE_FAMILIES` whose marker key `state_dict` holds."""
    for family in BACKBONE_FAMILIES:
        if family.detect(state_dict):
            return family
    expected = [f"{family.description} ('{family.marker}')" for family in BACKBONE_FAMILIES]
    raise ValueError(f"unsupported official backbone: expected {', '.join(expected[:-1])} or {expected[-1]}")


# ------------------------------------------------------------------------------------------------------ renaming
def _rename_backbone(family: BackboneFamily, state_dict: dict, config: SADCLConfig) -> dict[str, torch.Tensor]:
    """Backbone tensors -> `sadcl.backbone.*` keys of the model `config` builds. timm's `features_only` wrapper joins
    the first name levels of a flattened module with `_` (`layers.0` -> `layers_0`); names are matched up to that.
    The final norm (`backbone.0.norm`) goes to the model's own `backbone.norm`; InPlaceABN's `num_batches_tracked`
    has no slot in frozen BatchNorm and is dropped."""
    from ..modeling_sadcl import SADCLBackbone

    prefix = family.prefix
    backbone_state = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    final_norm = {key: backbone_state.pop(key) for key in ("norm.weight", "norm.bias") if key in backbone_state}
    with torch.device("meta"):
        targets = set(SADCLBackbone(config).state_dict())

    def normalise(key: str) -> str:
        return key.replace("_", ".")

    by_normalised = {normalise(key.removeprefix("body.")): key for key in targets if key.startswith("body.")}
    converted = {f"sadcl.backbone.norm.{key[5:]}": value for key, value in final_norm.items()}
    for key, value in family.official_keys(backbone_state, config).items():
        target = by_normalised.get(normalise(key))
        if target is None:
            if key.endswith("num_batches_tracked"):
                continue
            shape = tuple(value.shape)
            raise ValueError(f"tensor {prefix}{key} {shape} has no place in the {config.backbone} backbone")
        converted[f"sadcl.backbone.{target}"] = value
    return converted


def convert_official_state_dict(
    state_dict: dict[str, torch.Tensor],
    num_attention_heads: int = 4,
    id2label: dict[int, str] | None = None,
    image_size: int | None = None,
    backbone_num_heads: list[int] | None = None,
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
) -> tuple[SADCLConfig, dict[str, torch.Tensor]]:
    """Infers the architecture from the tensors and renames them to sadcl-hf keys.

    Read from the checkpoint: the backbone family and sizes, hidden size, encoder/decoder layers, feed-forward size,
    classes, input projection, projector, and (from the position table `backbone.1.pe`: image/32, CvT image/16) the
    image size. Not stored, hence arguments: the transformer's heads (4 in every Query2Label/SADCL release) and
    CvT's per-stage heads (`backbone_num_heads`, default: the published CvT of that width).

    Args:
        image_mean / image_std: input normalisation; default ImageNet's (Query2Label's inference), mean 0 / std 1
            for runs with `orid_norm`.

    Returns:
        (config, state dict for `SADCLForImageClassification`).

    Raises:
        ValueError: a tensor holds NaN or inf (naming it), or the checkpoint is not an official one.
    """
    state_dict = {key: value.float() if value.is_floating_point() else value for key, value in state_dict.items()}
    for key, value in state_dict.items():  # meta tensors (shape-only checks) hold no values
        if value.is_floating_point() and not value.is_meta and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise ValueError(
                f"the checkpoint's tensor {key!r} {tuple(value.shape)} holds {bad} non-finite values (NaN or inf) of "
                f"{value.numel()}: the checkpoint is damaged (a diverged run or a corrupt file); nothing was converted"
            )
    query = state_dict.get("query_embed.weight")
    if query is None:
        raise ValueError("not an official SADCL/Query2Label checkpoint: 'query_embed.weight' is missing")
    num_labels, hidden_dim = query.shape
    if id2label is not None and len(id2label) != num_labels:
        raise ValueError(f"id2label has {len(id2label)} names but the checkpoint has {num_labels} classes")
    family = backbone_family(state_dict)
    if image_size is None:
        position = state_dict.get("backbone.1.pe")
        image_size = int(position.shape[-1]) * family.stride if position is not None else 448
    backbone_fields = family.architecture(state_dict, image_size, backbone_num_heads)
    ffn_key = next(
        key
        for key in ("transformer.encoder.layers.0.linear1.weight", "transformer.decoder.layers.0.linear1.weight")
        if key in state_dict
    )
    config = SADCLConfig(
        **backbone_fields,
        use_pretrained_backbone=False,
        image_size=image_size,
        hidden_dim=hidden_dim,
        num_encoder_layers=_count(state_dict, r"transformer\.encoder\.layers\.(\d+)\."),
        num_decoder_layers=_count(state_dict, r"transformer\.decoder\.layers\.(\d+)\."),
        num_attention_heads=num_attention_heads,
        dim_feedforward=state_dict[ffn_key].shape[0],
        use_input_projection="input_proj.weight" in state_dict,
        projection_dim=state_dict["proj_head.layers.1.weight"].shape[0]
        if "proj_head.layers.1.weight" in state_dict
        else 1024,
        image_mean=list(image_mean or IMAGENET_DEFAULT_MEAN),
        image_std=list(image_std or IMAGENET_DEFAULT_STD),
        id2label=id2label if id2label is not None else {i: f"LABEL_{i}" for i in range(num_labels)},
    )
    converted = _rename_backbone(family, state_dict, config)
    for key, value in state_dict.items():
        if key.startswith("backbone.0."):
            continue
        for pattern, replacement in _KEY_RULES:
            if re.search(pattern, key):
                if replacement is not None:
                    converted[re.sub(pattern, replacement, key)] = value
                break
        else:
            raise ValueError(f"unexpected tensor in the official checkpoint: {key!r} {tuple(value.shape)}")
    for key in ("classifier.weight", "classifier.bias", "prototypes"):
        if key in converted and converted[key].dim() > 1 and converted[key].shape[0] == 1:
            converted[key] = converted[key][0]
    return config, converted


# ----------------------------------------------------------------------------------------------------- labels
def label_names_for_dataset(dataset: str) -> dict[int, str]:
    """The canonical class names of a benchmark in the released order (`sadcl_hf.data`'s registry): COCO's 80 in
    category-id order, VOC's 20, NUS-WIDE's 81. VG-500's names come from its file (`--id2label`)."""
    from ..data.loading import dataset_info

    info = dataset_info(dataset)
    if info.label_names is None:
        raise ValueError(
            f"{info.display_name} has no fixed class names in sadcl-hf; they come from its names file "
            "(VG-500: vg_category_500.json): pass it as id2label_file (--id2label)"
        )
    return dict(enumerate(info.label_names))


def _read_label_names(path: Path) -> dict[int, str]:
    """Label names from a JSON list, a JSON {index: name} or {name: index} object (VG-500's `vg_category_500.json`),
    or a text file with one name per line."""
    if not path.is_file():
        raise FileNotFoundError(f"label-name file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, list):
            return dict(enumerate(map(str, data)))
        if isinstance(data, dict) and all(isinstance(value, int) for value in data.values()):
            return {int(index): str(name) for name, index in data.items()}
        if isinstance(data, dict):
            return {int(key): str(value) for key, value in data.items()}
        raise ValueError(f"{path}: expected a JSON list of names or an object mapping index to name")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return dict(enumerate(names))


# ------------------------------------------------------------------------------------------------------ saving
def q2l_zoo_model(config: SADCLConfig) -> ZooModel | None:
    """The released Query2Label model with this backbone and training size, if any."""
    for entry in Q2L_MODEL_ZOO:
        if entry.backbone == config.backbone and entry.image_size == config.image_size and config.num_labels == 80:
            if config.backbone_kwargs is None or set(config.backbone_kwargs) <= {"img_size", "dynamic_img_size"}:
                return entry
    return None


def _source_section(checkpoint: Path, config: SADCLConfig, release: str, reported_map: float | None) -> str:
    """The model card's account of where the weights come from (`release`: "query2label" or "sadcl")."""
    repository, licence = _SOURCES[release]
    entry = q2l_zoo_model(config) if release == "query2label" else None
    name = f"the Query2Label model zoo's **{entry.name}**" if entry else f"an official {release} checkpoint"
    lines = ["", "## Source", ""]
    lines.append(
        f"Converted with `scripts/convert_official_checkpoint.py` from {name} (file `{checkpoint.name}`; code: "
        f"{repository}). The architecture is Query2Label's, which is SADCL's stage 1 (SARL)."
        + (
            " The projector and prototypes are new (`scripts/train.py --stage sadcl` computes the prototypes)."
            if release == "query2label"
            else ""
        )
    )
    if reported_map is not None:
        lines += [
            "",
            f"Reported mAP (`best_mAP` in the checkpoint): **{reported_map:.1f}** — as reported by its "
            "authors' run, not measured here.",
        ]
    elif entry is not None:
        lines += [
            "",
            f"Reported MS-COCO 2014 mAP: **{entry.reported_map:.1f}** — as reported by its authors, not measured here.",
        ]
    lines += ["", f"Licence: {licence}", ""]
    return "\n".join(lines)


def convert_official_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    num_attention_heads: int = 4,
    id2label_file: str | Path | None = None,
    dataset: str | None = None,
    image_size: int | None = None,
    backbone_num_heads: list[int] | None = None,
    orid_norm: bool = False,
):
    """Converts an official checkpoint file and saves a folder `AutoModelForImageClassification` loads (weights,
    config with label names, image processor, model card, remote code). Returns the converted model (eval mode).

    Args:
        id2label_file / dataset: label names from a file, else the benchmark's canonical names (`coco2014`,
            `voc2007`, `nuswide`; `vg500` needs the file); default `LABEL_i`. `dataset` also names the benchmark on
            the model card.
        image_size: the processor's size; default the training size read from the checkpoint.
        orid_norm: the run was trained without input normalisation (Query2Label's `orid_norm`: mean 0, std 1).
    """
    from ..image_processing import image_processor_for_config
    from ..model_card import save_model_card
    from ..modeling_sadcl import SADCLForImageClassification

    checkpoint = Path(checkpoint)
    if id2label_file is not None:
        id2label = _read_label_names(Path(id2label_file))
    else:
        id2label = label_names_for_dataset(dataset) if dataset is not None else None
    raw = load_official_checkpoint(checkpoint)
    state_dict = raw.get("state_dict", raw.get("model"))
    if not isinstance(state_dict, dict):
        raise ValueError(f"{checkpoint}: the 'state_dict' entry is not a dict of tensors")
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    reported_map = raw.get("best_mAP")
    reported_map = float(reported_map) if isinstance(reported_map, (int, float, np.floating)) else None
    del raw  # the optimizer state (memory-mapped, never read)
    normalisation = {"image_mean": [0.0] * 3, "image_std": [1.0] * 3} if orid_norm else {}
    config, state_dict = convert_official_state_dict(
        state_dict,
        num_attention_heads=num_attention_heads,
        id2label=id2label,
        image_size=image_size,
        backbone_num_heads=backbone_num_heads,
        **normalisation,
    )
    model = SADCLForImageClassification(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    missing = [key for key in missing if not key.startswith(("projector.", "prototypes"))]
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint}: tensors do not fit the inferred architecture; missing {missing}, unexpected {unexpected}"
        )
    model.eval()
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    processor = image_processor_for_config(config)
    processor.save_pretrained(output_dir)
    release = "sadcl" if "prototypes" in state_dict else "query2label"
    save_model_card(
        model,
        output_dir,
        dataset_name=dataset,
        stage="converted from Query2Label/SADCL (stage 1, SARL)",
        license="unknown",
        tags=["converted"],
        source=_source_section(checkpoint, config, release, reported_map),
    )
    return model
