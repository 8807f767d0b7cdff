"""SADCL: Semantic-Aware Dual Contrastive Learning for multi-label image classification (Ma et al., ECAI 2023).

SARL (semantic-aware representation learning, Sec. 3.1): a timm backbone's last feature map, a sine position
encoding and a Query2Label transformer (post-norm encoder; decoder layers with cross-attention only, one learned
query per class) give one label-level feature per class; a group-wise linear layer turns each into a logit.
The dual contrastive objective (Sec. 3.2-3.3) works on projected label-level features, a memory bank of recent
confident positives and learnable class prototypes.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import tempfile
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from huggingface_hub import create_repo
from timm.utils.model import freeze, freeze_batch_norm_2d
from torch import nn
from transformers import AutoBackbone, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING_NAMES
from transformers.utils import ModelOutput

from .configuration_sadcl import SADCLConfig
from .losses import SADCLLoss, confident_positives

__all__ = [
    "SADCLForImageClassification",
    "SADCLImageClassifierOutput",
    "SADCLModel",
    "SADCLModelOutput",
    "SADCLPreTrainedModel",
]


@dataclass
class SADCLModelOutput(ModelOutput):
    """
    Args:
        label_features (`torch.FloatTensor` [B, K, D]): one label-level feature per class (last decoder layer, after
            the decoder norm).
        feature_map (`torch.FloatTensor` [B, D, H, W]): the (projected) backbone feature map the decoder attends to.
        hidden_states (`tuple(torch.FloatTensor)`, num_decoder_layers + 1 of [B, K, D]): the class queries entering
            each decoder layer and the last layer's output (before the decoder norm); with `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, one [B, heads, K, H * W] per decoder layer): class-to-pixel
            cross-attention weights (transformers' [B, heads, queries, keys]; `attention_maps.class_attention_maps`
            gives the head-averaged [B, K, H, W] pictures); with `output_attentions=True`.
    """

    label_features: torch.FloatTensor | None = None
    feature_map: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SADCLImageClassifierOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` []): the training objective (eq. 12: ASL + w_s * SSCL + w_p * PSCL; ASL alone when
            `config.objective == "asl"`), given `labels`.
        logits (`torch.FloatTensor` [B, K]): one logit per class (sigmoid gives the probability).
        label_features (`torch.FloatTensor` [B, K, D]): label-level features.
        projected_label_features (`torch.FloatTensor` [B, K, P]): label-level features through the projector.
        hidden_states / attentions: see `SADCLModelOutput`.
        loss_terms (`dict[str, torch.FloatTensor []]`): the objective's terms by name, unweighted, given `labels`
            (`sadcl_hf.losses.LOSS_TERMS`: `asl`, and `sscl`, `pscl` with the SADCL objective).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    label_features: torch.FloatTensor | None = None
    projected_label_features: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    loss_terms: dict[str, torch.FloatTensor] | None = None


def _is_meta_init() -> bool:
    """True inside `from_pretrained`'s meta-device construction, where no weights must be downloaded."""
    return torch.empty(0).device.type == "meta"


class SADCLBackbone(nn.Module):
    """A timm or transformers model as a feature extractor: pixel_values [B, 3, H, W] -> feature map [B, C, H/s, W/s].

    timm (`config.use_timm_backbone`): `features_only` (last level); channels-last outputs (Swin, ...) are permuted to
    channels-first. transformers (`config.backbone_config`): the family's `AutoBackbone` where transformers has one
    (ResNet, ConvNeXt(V2), Swin, DINOv2, ...: DETR's pattern), whose last `feature_maps` entry [B, C, h, w] is the
    feature map; otherwise `AutoModel`, whose `last_hidden_state` [B, C, h, w] is (Query2Label's `CvtModel`). An
    optional final LayerNorm over the channels (`config.backbone_layer_norm`) follows. BatchNorm is frozen and early
    stages are frozen as the config says (timm's `freeze` helpers).
    """

    def __init__(self, config: SADCLConfig):
        super().__init__()
        pretrained = config.use_pretrained_backbone and not _is_meta_init()
        if config.use_timm_backbone:
            self.body = timm.create_model(
                config.backbone,
                pretrained=pretrained,
                features_only=True,
                out_indices=(-1,),
                **(config.backbone_kwargs or {}),
            )
            self.num_channels = self.body.feature_info.channels()[-1]
            self.reduction = self.body.feature_info.reduction()[-1]
            self.channels_last = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        else:
            self.body = self._transformers_body(config, pretrained)
            if self.is_transformers_backbone:
                self.num_channels = int(self.body.channels[-1])
                self._probe_size = config.image_size
            else:
                self.num_channels, self.reduction = self._transformers_feature_info(config.backbone_config)
            self.channels_last = False
        self.norm = nn.LayerNorm(self.num_channels, eps=1e-5) if config.backbone_layer_norm else None
        if config.freeze_backbone_batch_norm:
            self.body = freeze_batch_norm_2d(self.body)
        if config.backbone_frozen_stages >= 0:
            if not config.use_timm_backbone:
                raise ValueError("backbone_frozen_stages needs a timm backbone; set it to -1 for a transformers one")
            freeze(self.body, self._frozen_children(config.backbone_frozen_stages))
        # The backbone initialised (or loaded) these tensors: `post_init` keeps them. Not under `from_pretrained`
        # (meta device), which flags the tensors the checkpoint holds and has `_init_weights` set the missing ones.
        if not _is_meta_init():
            for tensor in itertools.chain(self.body.parameters(), self.body.buffers()):
                tensor._is_hf_initialized = True

    @property
    def is_transformers_backbone(self) -> bool:
        """The body is a transformers `AutoBackbone` (it returns `feature_maps`)."""
        return hasattr(self.body, "channels") and hasattr(self.body, "out_features")

    @staticmethod
    def _transformers_body(config: SADCLConfig, pretrained: bool) -> nn.Module:
        """`AutoBackbone` for `config.backbone_config` when its family has one, else `AutoModel`; an `AutoModel`'s
        `nn.GELU` activations become `backbone_config.hidden_act` when that is set (Query2Label's CvT uses QuickGELU,
        x * sigmoid(1.702 x), which `CvtModel` hard-codes as GELU)."""
        backbone_config = config.backbone_config
        if backbone_config.model_type in MODEL_FOR_BACKBONE_MAPPING_NAMES:
            if pretrained:
                return AutoBackbone.from_pretrained(config.backbone, config=backbone_config)
            return AutoBackbone.from_config(backbone_config)
        if pretrained:
            body = AutoModel.from_pretrained(config.backbone, config=config.backbone_config)
        else:
            body = AutoModel.from_config(config.backbone_config)
        activation = getattr(config.backbone_config, "hidden_act", None)
        if activation is not None:
            for module in body.modules():
                if isinstance(getattr(module, "activation", None), nn.GELU):
                    module.activation = ACT2FN[activation]
        return body

    @staticmethod
    def _transformers_feature_info(backbone_config) -> tuple[int, int]:
        """(channels, stride) of a transformers backbone's `last_hidden_state`, from its config (`embed_dim` or
        `hidden_sizes` per stage; `patch_stride` per stage, else 32)."""
        widths = getattr(backbone_config, "embed_dim", None) or getattr(backbone_config, "hidden_sizes", None)
        if not isinstance(widths, (list, tuple)):
            raise ValueError(
                f"unsupported transformers backbone {backbone_config.model_type!r}: its config needs per-stage "
                "'embed_dim' or 'hidden_sizes' and its output a [B, C, h, w] last_hidden_state"
            )
        return int(widths[-1]), math.prod(getattr(backbone_config, "patch_stride", None) or (32,))

    @functools.cached_property
    def reduction(self) -> int:
        """The stride of the feature map. An `AutoBackbone` does not record it: it is measured once, on a blank
        `config.image_size` image (timm and `AutoModel` bodies set it from their feature info at construction)."""
        size = self._probe_size
        parameter = next(self.body.parameters())
        with torch.no_grad():
            blank = torch.zeros(1, 3, size, size, device=parameter.device, dtype=parameter.dtype)
            height = self.body(blank).feature_maps[-1].shape[-2]
        return max(1, round(size / height))

    def _frozen_children(self, level: int) -> list[str]:
        """Names of the top-level backbone modules up to and including feature level `level`."""
        info = self.body.feature_info.info
        if level >= len(info):
            raise ValueError(f"backbone_frozen_stages={level} but the backbone has {len(info)} feature levels")
        target = info[level]["module"].replace(".", "_")
        children = [name for name, _ in self.body.named_children()]
        for i, name in enumerate(children):
            if target == name or target.startswith(name + "_"):
                return children[: i + 1]
        raise ValueError(
            f"backbone_frozen_stages is not supported for backbone {type(self.body).__name__} "
            f"(no top-level module for feature level {level}); set it to -1"
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.is_transformers_backbone:
            feature_map = self.body(pixel_values, return_dict=True).feature_maps[-1]
        elif isinstance(self.body, PreTrainedModel):
            feature_map = self.body(pixel_values, return_dict=True).last_hidden_state
        else:
            feature_map = self.body(pixel_values)[-1]
        if self.norm is not None:
            if not self.channels_last:
                feature_map = feature_map.permute(0, 2, 3, 1)
            feature_map = self.norm(feature_map).permute(0, 3, 1, 2)
        elif self.channels_last:
            feature_map = feature_map.permute(0, 3, 1, 2)
        return feature_map


class SADCLSinePositionEncoding(nn.Module):
    """DETR's normalised sine position encoding (Query2Label): [B, D, H, W] -> [1, D, H, W], D/2 features per axis."""

    def __init__(self, hidden_dim: int, temperature: float = 10000.0):
        super().__init__()
        self.num_pos_feats = hidden_dim // 2
        self.temperature = temperature
        self.scale = 2 * math.pi

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        height, width = feature_map.shape[-2:]
        device = feature_map.device
        eps = 1e-6
        y_embed = torch.arange(1, height + 1, device=device, dtype=torch.float32)[:, None].expand(height, width)
        x_embed = torch.arange(1, width + 1, device=device, dtype=torch.float32)[None, :].expand(height, width)
        y_embed = y_embed / (height + eps) * self.scale
        x_embed = x_embed / (width + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, device=device, dtype=torch.float32)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(2)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(2)
        return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1).unsqueeze(0).to(feature_map.dtype)


def eager_attention_forward(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0, **kwargs):
    """query [B, heads, Q, d], key/value [B, heads, N, d] -> (output [B, Q, heads, d], weights [B, heads, Q, N])."""
    weights = torch.softmax(torch.matmul(query, key.transpose(2, 3)) * scaling, dim=-1)
    attended = torch.matmul(F.dropout(weights, p=dropout, training=module.training), value)
    return attended.transpose(1, 2).contiguous(), weights


class SADCLAttention(nn.Module):
    """Multi-head attention with `nn.MultiheadAttention`'s parameters (`in_proj_weight` [3D, D], `in_proj_bias` [3D],
    `out_proj`), so official and earlier checkpoints load unchanged.

    `config._attn_implementation` picks the kernel from transformers' `ALL_ATTENTION_FUNCTIONS` (`"sdpa"`:
    `torch.nn.functional.scaled_dot_product_attention`; `"eager"`: explicit softmax). Calls that request the weights
    take the eager path.
    """

    def __init__(self, config: SADCLConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_dim // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.dropout
        self.is_causal = False
        self.in_proj_weight = nn.Parameter(torch.empty(3 * config.hidden_dim, config.hidden_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * config.hidden_dim))
        self.out_proj = nn.Linear(config.hidden_dim, config.hidden_dim)

    def _heads(self, states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> projected and split [B, heads, N, D / heads]."""
        batch_size, length, _ = states.shape
        return F.linear(states, weight, bias).view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query [B, Q, D], key/value [B, N, D] -> (attended [B, Q, D], weights [B, heads, Q, N] or None)."""
        weights_q, weights_k, weights_v = self.in_proj_weight.chunk(3)
        bias_q, bias_k, bias_v = self.in_proj_bias.chunk(3)
        query = self._heads(query, weights_q, bias_q)
        key = self._heads(key, weights_k, bias_k)
        value = self._heads(value, weights_v, bias_v)
        attention_interface = eager_attention_forward
        if not output_attentions:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        attended, weights = attention_interface(
            self, query, key, value, None, dropout=self.dropout if self.training else 0.0, scaling=self.scaling
        )
        return self.out_proj(attended.flatten(2)), weights if output_attentions else None


class SADCLPostNormLayer(GradientCheckpointingLayer):
    """Post-norm transformer layer as in DETR: an attention block (module `attention_name`, norm
    `{attention_name}_norm`), then a ReLU feed-forward block (`linear1`, `linear2`, `ffn_norm`)."""

    def __init__(self, config: SADCLConfig, attention_name: str):
        super().__init__()
        dim = config.hidden_dim
        self.attention_name = attention_name
        self.add_module(attention_name, SADCLAttention(config))
        self.add_module(f"{attention_name}_norm", nn.LayerNorm(dim))
        self.linear1 = nn.Linear(dim, config.dim_feedforward)
        self.linear2 = nn.Linear(config.dim_feedforward, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(config.dropout)

    def attend(self, residual, query, key, value, output_attentions: bool = False):
        """norm(residual + attention(query, key, value)): [B, Q, D] -> ([B, Q, D], weights [B, heads, Q, N] or None)."""
        attended, weights = getattr(self, self.attention_name)(query, key, value, output_attentions)
        return getattr(self, f"{self.attention_name}_norm")(residual + self.dropout(attended)), weights

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        ffn = self.linear2(self.dropout(torch.relu(self.linear1(hidden_states))))
        return self.ffn_norm(hidden_states + self.dropout(ffn))


class SADCLEncoderLayer(SADCLPostNormLayer):
    """DETR encoder layer: self-attention over the pixels (position added to queries and keys), then the FFN."""

    def __init__(self, config: SADCLConfig):
        super().__init__(config, "self_attn")

    def forward(self, hidden_states: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """hidden_states, position: [B, HW, D] -> [B, HW, D]."""
        query = hidden_states + position
        hidden_states, _ = self.attend(hidden_states, query, query, hidden_states)
        return self.feed_forward(hidden_states)


class SADCLDecoderLayer(SADCLPostNormLayer):
    """Query2Label decoder layer: cross-attention from class queries to pixels (no self-attention), then the FFN."""

    def __init__(self, config: SADCLConfig):
        super().__init__(config, "cross_attn")

    def forward(
        self,
        queries: torch.Tensor,
        query_position: torch.Tensor,
        memory: torch.Tensor,
        position: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """queries [B, K, D], query_position [1, K, D], memory/position [B, HW, D]
        -> (label features [B, K, D], attention weights [B, heads, K, HW] or None)."""
        queries, weights = self.attend(queries, queries + query_position, memory + position, memory, output_attentions)
        return self.feed_forward(queries), weights


class SADCLTransformerEncoder(nn.Module):
    def __init__(self, config: SADCLConfig):
        super().__init__()
        self.layers = nn.ModuleList(SADCLEncoderLayer(config) for _ in range(config.num_encoder_layers))

    def forward(self, hidden_states: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states, position)
        return hidden_states


class SADCLTransformerDecoder(nn.Module):
    def __init__(self, config: SADCLConfig):
        super().__init__()
        self.layers = nn.ModuleList(SADCLDecoderLayer(config) for _ in range(config.num_decoder_layers))
        self.norm = nn.LayerNorm(config.hidden_dim)

    def forward(self, query_embeds, memory, position, output_attentions=False, output_hidden_states=False):
        """query_embeds [K, D], memory/position [B, HW, D] -> (label features [B, K, D], per layer: attention
        weights [B, heads, K, HW] or None, hidden states: the queries entering each layer and the last layer's output
        [B, K, D] before the final norm, or None)."""
        query_position = query_embeds.unsqueeze(0)
        queries = torch.zeros(memory.shape[0], *query_embeds.shape, dtype=memory.dtype, device=memory.device)
        attentions, hidden_states = [], [queries]
        for layer in self.layers:
            queries, weights = layer(queries, query_position, memory, position, output_attentions=output_attentions)
            attentions.append(weights)
            hidden_states.append(queries)
        return (
            self.norm(queries),
            tuple(attentions) if output_attentions else None,
            tuple(hidden_states) if output_hidden_states else None,
        )


class SADCLTransformer(nn.Module):
    """Encoder over the pixels, then the class-query decoder (one call, so device-map hooks see the whole module)."""

    def __init__(self, config: SADCLConfig):
        super().__init__()
        self.encoder = SADCLTransformerEncoder(config)
        self.decoder = SADCLTransformerDecoder(config)

    def forward(self, memory, position, query_embeds, output_attentions=False, output_hidden_states=False):
        """memory/position [B, HW, D], query_embeds [K, D] -> the decoder's (label features, attentions, hidden
        states)."""
        memory = self.encoder(memory, position)
        return self.decoder(query_embeds, memory, position, output_attentions, output_hidden_states)


class SADCLPreTrainedModel(PreTrainedModel):
    config_class = SADCLConfig
    base_model_prefix = "sadcl"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["SADCLEncoderLayer", "SADCLDecoderLayer"]
    _keys_to_ignore_on_load_unexpected = [r"memory_bank"]
    # The loss is a per-batch mean and `forward` ignores `num_items_in_batch`: transformers' Trainer must divide it by
    # the gradient accumulation steps (its `**kwargs` would otherwise read as "the model normalises the loss itself").
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Query2Label's init (Xavier-uniform matrices) for the input projection, transformer and heads; the
        backbone's own init for backbone tensors (`_init_backbone_as_built`). transformers' guarded `init` functions
        skip tensors already set: the backbone's weights in a model built from a config (`SADCLBackbone` flags them)
        and tensors a checkpoint held, so `from_pretrained` initialises exactly the missing ones."""
        body = self.base_model.backbone.body
        if not isinstance(body, PreTrainedModel) and any(module is submodule for submodule in body.modules()):
            self._init_backbone_as_built(body)
        elif isinstance(module, SADCLAttention):
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):  # the input projection is the only Conv2d outside the backbone
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=1.0)
        elif isinstance(module, SADCLGroupWiseLinear):
            bound = 1.0 / math.sqrt(module.weight.shape[-1])
            init.uniform_(module.weight, -bound, bound)
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, SADCLForImageClassification):
            init.normal_(module.prototypes, std=1.0)
        if hasattr(module, "init_non_persistent_buffers"):  # timm modules with computed buffers (Swin, ...)
            module.init_non_persistent_buffers()

    def _init_backbone_as_built(self, body: nn.Module) -> None:
        """Gives every tensor of the timm backbone `body` that nothing set (a checkpoint lacked it) the value a freshly
        built backbone has, and flags it: the architecture's own init, whatever the family (ResNet: Kaiming-normal
        convolutions and a zero last BatchNorm weight in each residual block, timm's `zero_init_last`; ViT/Swin:
        truncated-normal embeddings; ConvNeXt: layer scales 1e-6, ...). A transformers backbone is a
        `PreTrainedModel`, to which transformers applies its own `_init_weights`."""
        missing = {
            name: tensor
            for name, tensor in body.state_dict(keep_vars=True).items()
            if not getattr(tensor, "_is_hf_initialized", False)
        }
        if not missing:
            return
        config = copy.deepcopy(self.config)
        config.use_pretrained_backbone = False
        built = SADCLBackbone(config).body.state_dict()
        for name, tensor in missing.items():
            tensor.copy_(built[name])
            tensor._is_hf_initialized = True

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Saves weights (safetensors) and config; with remote code registered, `auto_map` lists all three Auto
        classes."""
        if getattr(self, "_auto_class", None) is not None:
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoConfig": "configuration_sadcl.SADCLConfig",
                "AutoModel": "modeling_sadcl.SADCLModel",
                "AutoModelForImageClassification": "modeling_sadcl.SADCLForImageClassification",
            }
            try:  # the stock image-classification pipeline with sadcl-hf's image loading, as remote code
                from sadcl_hf.data.pipeline_image_classification import save_pipeline_code
            except ImportError:  # remote code without sadcl-hf cannot copy that pipeline's files: drop its entry
                vars(self.config).pop("custom_pipelines", None)
            else:
                save_pipeline_code(self.config, save_directory)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def push_to_hub(self, repo_id: str, *, tags: list[str] | None = None, **kwargs):
        """transformers' `push_to_hub` (same arguments), with the SADCL model card as the repository's README.md:
        labels, thresholds, usage, citation and the results of the model's card data (`model.model_card_data`, else
        the `model_card_data.json` of the folder it was loaded from) as its `model-index`, and that card data
        (`sadcl_hf.model_card`). Without sadcl-hf installed (remote code) it is transformers' push."""
        try:
            from sadcl_hf.model_card import save_model_card
        except ImportError:  # remote code without sadcl-hf: transformers' generic card
            return super().push_to_hub(repo_id, tags=tags, **kwargs)
        max_shard_size = kwargs.pop("max_shard_size", "50GB")
        private, token = kwargs.pop("private", None), kwargs.pop("token", None)
        repo_id = create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            save_model_card(self, folder, model_id=repo_id, tags=tags)
            return self._upload_modified_files(folder, repo_id, files_timestamps={}, token=token, **kwargs)


class SADCLModel(SADCLPreTrainedModel):
    """SARL: pixel_values [B, 3, H, W] -> label-level features [B, K, D] (Sec. 3.1, eqs. 1-3)."""

    def __init__(self, config: SADCLConfig):
        super().__init__(config)
        self.backbone = SADCLBackbone(config)
        use_projection = config.use_input_projection
        if use_projection is None:
            use_projection = self.backbone.num_channels != config.hidden_dim
        if not use_projection and self.backbone.num_channels != config.hidden_dim:
            raise ValueError(
                f"backbone {config.backbone!r} gives {self.backbone.num_channels} channels but hidden_dim is "
                f"{config.hidden_dim}: set use_input_projection=True (or None)"
            )
        self.input_projection = (
            nn.Conv2d(self.backbone.num_channels, config.hidden_dim, kernel_size=1) if use_projection else nn.Identity()
        )
        self.position_encoding = SADCLSinePositionEncoding(config.hidden_dim)
        self.transformer = SADCLTransformer(config)
        self.query_embed = nn.Embedding(config.num_labels, config.hidden_dim)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SADCLModelOutput | tuple:
        """pixel_values [B, 3, H, W] -> label features [B, K, D]; see `SADCLModelOutput`."""
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        feature_map = self.input_projection(self.backbone(pixel_values))
        position = self.position_encoding(feature_map).flatten(2).transpose(1, 2)
        memory = feature_map.flatten(2).transpose(1, 2)
        query_embeds = self.query_embed(torch.arange(self.config.num_labels, device=feature_map.device))
        label_features, attentions, hidden_states = self.transformer(
            memory, position, query_embeds, output_attentions, output_hidden_states
        )
        output = SADCLModelOutput(
            label_features=label_features,
            feature_map=feature_map,
            hidden_states=hidden_states,
            attentions=attentions,
        )
        return output if return_dict else output.to_tuple()


class SADCLGroupWiseLinear(nn.Module):
    """Group-wise linear classifier: logits[b, k] = <W[k], h[b, k]> + b[k] (eq. 4). [B, K, D] -> [B, K]."""

    def __init__(self, num_labels: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_labels, dim))
        self.bias = nn.Parameter(torch.empty(num_labels))

    def forward(self, label_features: torch.Tensor) -> torch.Tensor:
        return (label_features * self.weight).sum(-1) + self.bias


class SADCLForImageClassification(SADCLPreTrainedModel):
    """SADCL multi-label classifier: SARL + group-wise linear logits, with projector, prototypes and memory bank for
    the dual contrastive objective.

    The memory bank ([N, K, D] raw label-level features, one row per slot of the training batch) is training state,
    not a weight: a non-persistent buffer, so an inference checkpoint does not depend on the training batch size.
    Only a training forward (`model.train()`, labels, objective `"sadcl"`) reads, resizes or writes it: it is
    (re)started from the prototypes when a batch is larger than it, a smaller batch (the last of an epoch) uses its
    first rows, and `SADCLTrainer` keeps it with each checkpoint, one file per process
    (`memory_bank-rank{i}.safetensors`, `sadcl_hf.training.callbacks.CheckpointStateCallback`), and restores it on
    resume.
    In eval mode the SSCL view that the bank would give is the prototypes (the bank's state before the first training
    step), so evaluation never changes the bank and `eval_loss` depends neither on it nor on the batch size.
    """

    def __init__(self, config: SADCLConfig):
        super().__init__(config)
        self.sadcl = SADCLModel(config)
        self.classifier = SADCLGroupWiseLinear(config.num_labels, config.hidden_dim)
        self.projector = nn.Sequential(
            nn.Linear(config.hidden_dim, config.hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(config.hidden_dim, config.projection_dim),
        )
        self.prototypes = nn.Parameter(torch.empty(config.num_labels, config.hidden_dim))
        self.register_buffer("memory_bank", torch.zeros(0, config.num_labels, config.hidden_dim), persistent=False)
        self.criterion = SADCLLoss.from_config(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SADCLImageClassifierOutput | tuple:
        """pixel_values [B, 3, H, W]; labels (optional) multi-hot [B, K].

        SSCL contrasts the batch's projected label features with a second view [B, K, P] (eq. 12). In training mode
        that view is the memory bank's first B rows, and the bank is updated after the loss is computed (no gradient):
        rows where the label is 1 and sigmoid(logit) > `config.memory_bank_threshold` take the new label-level
        feature. In eval mode the view is the prototypes repeated B times and the bank is left untouched.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.sadcl(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        label_features = outputs.label_features
        logits = self.classifier(label_features)
        projected = self.projector(label_features)

        loss = loss_terms = None
        if labels is not None:
            labels = labels.to(logits.dtype)
            if labels.shape != logits.shape:
                raise ValueError(f"labels must be multi-hot of shape {tuple(logits.shape)}, got {tuple(labels.shape)}")
            if self.config.objective == "sadcl":
                batch_size = logits.shape[0]
                if self.training:
                    bank = self.memory_bank_for_batch(batch_size)
                else:
                    bank = self.prototypes.detach().expand(batch_size, -1, -1)
                result = self.criterion(
                    logits, labels, projected, self.projector(bank.to(projected.dtype)), self.projector(self.prototypes)
                )
                if self.training:
                    self.update_memory_bank(label_features, logits, labels)
            else:
                result = self.criterion(logits, labels)
            loss, loss_terms = result.loss, result.terms

        output = SADCLImageClassifierOutput(
            loss=loss,
            logits=logits,
            label_features=label_features,
            projected_label_features=projected,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            loss_terms=loss_terms,
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def memory_bank_for_batch(self, batch_size: int) -> torch.Tensor:
        """The memory bank's first `batch_size` rows [B, K, D] (training forward only); a bank smaller than the batch
        restarts from the prototypes."""
        if self.memory_bank.shape[0] < batch_size:
            self.reset_memory_bank(batch_size)
        return self.memory_bank[:batch_size]

    @torch.no_grad()
    def reset_memory_bank(self, size: int) -> None:
        """Fills a bank of `size` rows with the current prototypes (the state before the first training step)."""
        self.memory_bank = self.prototypes.detach().float().unsqueeze(0).repeat(size, 1, 1)

    @torch.no_grad()
    def update_memory_bank(self, label_features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Rows b < B, classes k with labels[b, k] == 1 and sigmoid(logits[b, k]) > threshold take label_features[b, k].

        The bank is replaced, not written in place, so tensors saved for the backward pass stay valid.
        """
        batch_size = logits.shape[0]
        bank = self.memory_bank_for_batch(batch_size)
        confident = confident_positives(logits, labels, self.config.memory_bank_threshold)
        updated = torch.where(confident.unsqueeze(-1), label_features.detach().float(), bank)
        self.memory_bank = torch.cat([updated, self.memory_bank[batch_size:]], dim=0)
