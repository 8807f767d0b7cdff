"""Conversion of official SADCL / Query2Label checkpoints (github.com/yu-gi-oh-leilei/SADCL) to sadcl-hf folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .configuration_sadcl import SADCLConfig

__all__ = ["convert_official_checkpoint", "convert_official_state_dict", "load_official_state_dict"]

# Official key -> sadcl-hf key (first match wins); `None` drops the tensor.
_KEY_RULES: list[tuple[str, str | None]] = [
    (r"^backbone\.0\.body\.", "sadcl.backbone.body."),
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

# Official torchvision ResNets -> timm models with the same weights layout (blocks per stage, bottleneck?).
_RESNETS = {
    ((2, 2, 2, 2), False): "resnet18.tv_in1k",
    ((3, 4, 6, 3), False): "resnet34.tv_in1k",
    ((3, 4, 6, 3), True): "resnet50.tv_in1k",
    ((3, 4, 23, 3), True): "resnet101.tv_in1k",
    ((3, 8, 36, 3), True): "resnet152.tv_in1k",
}


def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads an official checkpoint: a `.pth`/`.pth.tar` holding `{"state_dict": ...}` (or a bare state dict),
    loaded with `weights_only=True`, or a `.safetensors` file. Strips DataParallel's `module.` prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_dict = load_file(str(path))
    else:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state_dict = checkpoint.get("state_dict", checkpoint.get("model", checkpoint))
        if not isinstance(state_dict, dict):
            raise ValueError(f"{path}: expected a state dict or a dict with a 'state_dict' entry")
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def _infer_backbone(state_dict: dict[str, torch.Tensor]) -> str:
    prefix = "backbone.0.body."
    if f"{prefix}conv1.weight" not in state_dict:
        raise ValueError(
            "unsupported official backbone: expected a torchvision-layout ResNet under 'backbone.0.body.' "
            "(key 'backbone.0.body.conv1.weight' is missing)"
        )
    blocks = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for key in state_dict if (m := re.match(rf"{prefix}layer{stage}\.(\d+)\.", key))}
        blocks.append(max(indices) + 1 if indices else 0)
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state_dict
    name = _RESNETS.get((tuple(blocks), bottleneck))
    if name is None:
        raise ValueError(f"unsupported ResNet depth: blocks per stage {blocks}, bottleneck={bottleneck}")
    return name


def _count_layers(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    indices = {int(m.group(1)) for key in state_dict if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", key))}
    return max(indices) + 1 if indices else 0


def convert_official_state_dict(
    state_dict: dict[str, torch.Tensor],
    num_attention_heads: int = 4,
    id2label: dict[int, str] | None = None,
    image_size: int | None = None,
) -> tuple[SADCLConfig, dict[str, torch.Tensor]]:
    """Infers the architecture from the tensor shapes and renames the tensors.

    Backbone depth, hidden size, encoder/decoder layers, feed-forward size, classes, input projection and (from the
    position buffer, stride 32) the image size are read from the checkpoint; the number of heads cannot be and
    defaults to 4 (the paper's).
    """
    state_dict = {key: value.float() if value.is_floating_point() else value for key, value in state_dict.items()}
    query = state_dict.get("query_embed.weight")
    if query is None:
        raise ValueError("not an official SADCL/Query2Label checkpoint: 'query_embed.weight' is missing")
    num_labels, hidden_dim = query.shape
    if image_size is None:
        pe = state_dict.get("backbone.1.pe")
        image_size = int(pe.shape[-1]) * 32 if pe is not None else 448
    if id2label is not None and len(id2label) != num_labels:
        raise ValueError(f"id2label has {len(id2label)} names but the checkpoint has {num_labels} classes")
    config = SADCLConfig(
        backbone=_infer_backbone(state_dict),
        use_pretrained_backbone=False,
        image_size=image_size,
        hidden_dim=hidden_dim,
        num_encoder_layers=_count_layers(state_dict, "transformer.encoder.layers."),
        num_decoder_layers=_count_layers(state_dict, "transformer.decoder.layers."),
        num_attention_heads=num_attention_heads,
        dim_feedforward=state_dict["transformer.encoder.layers.0.linear1.weight"].shape[0]
        if "transformer.encoder.layers.0.linear1.weight" in state_dict
        else state_dict["transformer.decoder.layers.0.linear1.weight"].shape[0],
        use_input_projection="input_proj.weight" in state_dict,
        projection_dim=state_dict["proj_head.layers.1.weight"].shape[0]
        if "proj_head.layers.1.weight" in state_dict
        else 1024,
        id2label=id2label if id2label is not None else {i: f"LABEL_{i}" for i in range(num_labels)},
    )
    converted = {}
    for key, value in state_dict.items():
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


def convert_official_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    num_attention_heads: int = 4,
    id2label_file: str | Path | None = None,
):
    """Converts an official checkpoint file and saves a folder `AutoModelForImageClassification` loads
    (weights, config with label names, image processor). Returns the loaded model."""
    from .image_processing import image_processor_for_config
    from .modeling_sadcl import SADCLForImageClassification

    id2label = None
    if id2label_file is not None:
        id2label = _read_label_names(Path(id2label_file))
    config, state_dict = convert_official_state_dict(
        load_official_state_dict(checkpoint), num_attention_heads=num_attention_heads, id2label=id2label
    )
    model = SADCLForImageClassification(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint}: tensors do not fit the inferred architecture; missing {missing}, unexpected {unexpected}"
        )
    model.eval()
    model.save_pretrained(output_dir)
    image_processor_for_config(config).save_pretrained(output_dir)
    return model


def _read_label_names(path: Path) -> dict[int, str]:
    """Label names from a JSON list, a JSON {index: name} object, or a text file with one name per line."""
    if not path.is_file():
        raise FileNotFoundError(f"label-name file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, list):
            return dict(enumerate(map(str, data)))
        if isinstance(data, dict):
            return {int(key): str(value) for key, value in data.items()}
        raise ValueError(f"{path}: expected a JSON list of names or an object mapping index to name")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return dict(enumerate(names))
