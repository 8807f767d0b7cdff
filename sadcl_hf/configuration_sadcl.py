"""SADCL model configuration."""

from __future__ import annotations

import copy
import math
import numbers
from typing import Any, NamedTuple

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig

__all__ = [
    "COCO_LABELS",
    "DIGIT_CLASSES",
    "NUS_WIDE_CONCEPTS",
    "SADCL_PRESETS",
    "SADCLConfig",
    "SSCL_MODES",
    "VOC_CLASSES",
]
SSCL_MODES = ("reference", "corrected")
"""How SSCL contrasts its positives: as the released code (the paper's numbers) or as the paper's equation."""

# The class names of the benchmarks, in their released order: their one home. They live here, not in `data/`,
# because this module ships as remote code with every checkpoint and its paper presets name the COCO classes; it may
# import nothing from `data/` (not shipped), while `data/` imports these lists from here.

# The 80 MS-COCO categories in the benchmark's standard order (ascending category id).
COCO_LABELS = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]

# The 20 PASCAL VOC classes in the standard VOC order.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# The 81 NUS-WIDE concepts in `Concepts81.txt` order (alphabetical).
NUS_WIDE_CONCEPTS = (
    "airport", "animal", "beach", "bear", "birds", "boats", "book", "bridge", "buildings", "cars", "castle", "cat",
    "cityscape", "clouds", "computer", "coral", "cow", "dancing", "dog", "earthquake", "elk", "fire", "fish", "flags",
    "flowers", "food", "fox", "frost", "garden", "glacier", "grass", "harbor", "horses", "house", "lake", "leaf",
    "map", "military", "moon", "mountain", "nighttime", "ocean", "person", "plane", "plants", "police", "protest",
    "railroad", "rainbow", "reflection", "road", "rocks", "running", "sand", "sign", "sky", "snow", "soccer",
    "sports", "statue", "street", "sun", "sunset", "surf", "swimmers", "tattoo", "temple", "tiger", "tower", "town",
    "toy", "train", "tree", "valley", "vehicle", "water", "waterfall", "wedding", "whales", "window", "zebra",
)  # fmt: skip

# The 10 classes of the digits-mosaic demo dataset (the "tiny" preset's).
DIGIT_CLASSES = tuple(str(digit) for digit in range(10))

_COCO_ID2LABEL = dict(enumerate(COCO_LABELS))

# Named configurations for `SADCLConfig.from_preset`. Every field not listed keeps the class default, which is
# the paper's COCO setting (ResNet-101, 448 px, hidden 2048, 1 encoder + 2 decoder layers, 4 heads, FFN 8192).
SADCL_PRESETS: dict[str, dict[str, Any]] = {
    "paper-r101-448": {"id2label": _COCO_ID2LABEL},
    "paper-r101-576": {"id2label": _COCO_ID2LABEL, "image_size": 576},
    # Fast on CPU: the tests and `make demo` (64 px digit mosaics, 10 classes).
    "tiny": {
        "backbone": "resnet10t.c3_in1k",
        "use_pretrained_backbone": False,
        "backbone_kwargs": {"output_stride": 16},
        "backbone_frozen_stages": -1,
        "freeze_backbone_batch_norm": False,
        "image_size": 64,
        "hidden_dim": 128,
        "num_attention_heads": 4,
        "dim_feedforward": 256,
        "projection_dim": 128,
        "id2label": dict(enumerate(DIGIT_CLASSES)),
    },
}


class _Range(NamedTuple):
    """What a numeric config field accepts: an integer or any real number, at least `low` (more than `low` when
    `low_open`), at most `high`."""

    integer: bool
    low: float
    high: float | None = None
    low_open: bool = False

    def describe(self) -> str:
        if self.integer and self.low == 1 and self.high is None:
            return "a positive integer"
        kind = "an integer" if self.integer else "a number"
        if self.low == -math.inf:
            return f"a finite {kind[3:] if self.integer else kind[2:]}"
        if self.high is not None:
            return f"{kind} in [{self.low}, {self.high}]"
        return f"{kind} {'>' if self.low_open else '>='} {self.low}"

    def accepts(self, value: Any) -> bool:
        kind = numbers.Integral if self.integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and (self.high is None or value <= self.high)


_PROBABILITY = _Range(integer=False, low=0, high=1)
_POSITIVE_INT = _Range(integer=True, low=1)
_NON_NEGATIVE = _Range(integer=False, low=0)
_POSITIVE = _Range(integer=False, low=0, low_open=True)

# The numeric fields and the values each accepts (checked by `SADCLConfig.validate_architecture`).
_NUMERIC_FIELDS: dict[str, _Range] = {
    "backbone_frozen_stages": _Range(integer=True, low=-1),
    "image_size": _POSITIVE_INT,
    "hidden_dim": _POSITIVE_INT,
    "num_encoder_layers": _Range(integer=True, low=0),
    "num_decoder_layers": _POSITIVE_INT,
    "num_attention_heads": _POSITIVE_INT,
    "dim_feedforward": _POSITIVE_INT,
    "dropout": _PROBABILITY,
    "projection_dim": _POSITIVE_INT,
    "asl_gamma_neg": _NON_NEGATIVE,
    "asl_gamma_pos": _NON_NEGATIVE,
    "asl_clip": _PROBABILITY,
    "asl_eps": _NON_NEGATIVE,
    "sscl_weight": _NON_NEGATIVE,
    "pscl_weight": _NON_NEGATIVE,
    "sscl_temperature": _POSITIVE,
    "sscl_base_temperature": _POSITIVE,
    "pscl_temperature": _POSITIVE,
    "memory_bank_threshold": _PROBABILITY,
    "prototype_threshold": _PROBABILITY,
    "initializer_range": _NON_NEGATIVE,
}
# List fields: (number of entries, or None for one per class; the values each entry accepts).
_NUMERIC_LIST_FIELDS: dict[str, tuple[int | None, _Range]] = {
    "thresholds": (None, _PROBABILITY),
    "image_mean": (3, _Range(integer=False, low=-math.inf)),
    "image_std": (3, _POSITIVE),
}


def _described(value: Any) -> str:
    """`'abc' (type str)`: a value and its type, for error messages."""
    return f"{value!r} (type {type(value).__name__})"


def _check_number(name: str, value: Any, expected: _Range) -> None:
    """Raises `ValueError` "NAME must be <expected>, got VALUE" unless `expected` accepts `value`."""
    if not expected.accepts(value):
        raise ValueError(f"{name} must be {expected.describe()}, got {value!r}")


def _check_number_list(name: str, value: Any, length: int, expected: _Range) -> None:
    """Raises `ValueError` naming the field unless `value` is a list of `length` numbers that `expected` accepts."""
    wanted = f"{name} must be a list of {length} entries, each {expected.describe()}"
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{wanted}; got {_described(value)}")
    if len(value) != length:
        raise ValueError(f"{wanted}; got {len(value)} entries: {list(value)!r}")
    for index, item in enumerate(value):
        if not expected.accepts(item):
            raise ValueError(f"{wanted}; entry {index} is {_described(item)}")


@strict
class SADCLConfig(PreTrainedConfig):
    r"""Configuration of a [`SADCLForImageClassification`] (Ma et al., ECAI 2023): a backbone (timm, or transformers
    as in DETR), a Query2Label transformer that gives one label-level feature [K, D] per class, a group-wise linear
    classifier, a projector and class prototypes for the dual contrastive objective. The defaults are the paper's
    MS-COCO model; `SADCLConfig.from_preset("paper-r101-448")` adds the 80 COCO label names, and `SADCL_PRESETS`
    lists the named configurations.

    The keyword arguments of [`PreTrainedConfig`] (`id2label`, `num_labels`, ...) name the K classes; `problem_type`
    defaults to `"multi_label_classification"`, the only one SADCL supports. Each value is checked when the config is
    built ([`~SADCLConfig.validate_architecture`]); a bad one raises `ValueError` naming the field.

    Args:
        backbone (`str`, *optional*, defaults to `"resnet101.tv_in1k"`):
            With `use_timm_backbone`, any timm model name (`timm.list_models()`); otherwise the Hub id of the
            transformers model that `backbone_config` describes (its weights are loaded only with
            `use_pretrained_backbone`). The backbone's last feature map feeds the transformer.
        use_timm_backbone (`bool`, *optional*, defaults to `True`):
            Build the backbone with timm, or (`False`), as in DETR, with transformers from `backbone_config`.
        backbone_config (`dict` or `PreTrainedConfig`, *optional*, defaults to `None`):
            The transformers backbone's configuration, required exactly when `use_timm_backbone=False`; a dict needs
            a `model_type` entry. An extra `hidden_act` entry replaces the backbone's `nn.GELU` activations
            (Query2Label's CvT uses `"quick_gelu"`, which `CvtModel` hard-codes as GELU).
        use_pretrained_backbone (`bool`, *optional*, defaults to `True`):
            Load the backbone's pretrained weights when a model is built from this config. Never used by
            `from_pretrained`, whose checkpoint already holds the backbone.
        backbone_kwargs (`dict`, *optional*, defaults to `None`):
            Extra `timm.create_model` arguments, e.g. `{"output_stride": 16}`.
        backbone_layer_norm (`bool`, *optional*, defaults to `False`):
            A LayerNorm (eps 1e-5) over the channels of the backbone's feature map: the final norm that Query2Label's
            Swin and CvT backbones apply (timm's `features_only` output and `CvtModel` leave it out).
        freeze_backbone_batch_norm (`bool`, *optional*, defaults to `True`):
            Replace BatchNorm by FrozenBatchNorm2d (statistics and affine fixed), as the paper does.
        backbone_frozen_stages (`int`, *optional*, defaults to `1`):
            Freeze the backbone up to and including timm feature level N (ResNets: 0 = stem, 1 = stem + layer1, the
            paper's setting); -1 trains everything.
        image_size (`int`, *optional*, defaults to `448`):
            Training and evaluation resolution (square side, pixels).
        hidden_dim (`int`, *optional*, defaults to `2048`):
            Transformer width D, the size of a label-level feature; divisible by `num_attention_heads` and even (sine
            position encoding).
        num_encoder_layers (`int`, *optional*, defaults to `1`):
            Transformer encoder layers over the backbone's feature map (0: none).
        num_decoder_layers (`int`, *optional*, defaults to `2`):
            Transformer decoder layers in which the K label queries attend to the image features.
        num_attention_heads (`int`, *optional*, defaults to `4`):
            Attention heads of every transformer layer.
        dim_feedforward (`int`, *optional*, defaults to `8192`):
            Hidden size of the transformer layers' feed-forward blocks.
        dropout (`float`, *optional*, defaults to `0.1`):
            Dropout probability in the transformer layers (attention weights, residual branches, feed-forward).
        use_input_projection (`bool`, *optional*, defaults to `None`):
            A 1x1 convolution from the backbone's channels to `hidden_dim`; `None` adds it only when the two differ
            (the official `keep_input_proj=False`).
        projection_dim (`int`, *optional*, defaults to `1024`):
            Output size of the contrastive projector (1024 in the paper).
        image_mean (`list[float]`, *optional*, defaults to `None`):
            Per-channel input normalisation mean (3 values); `None` takes the backbone's (timm `pretrained_cfg`).
        image_std (`list[float]`, *optional*, defaults to `None`):
            Per-channel input normalisation standard deviation (3 positive values); `None` takes the backbone's.
        objective (`str`, *optional*, defaults to `"sadcl"`):
            `"sadcl"` (ASL + SSCL + PSCL, eq. 12) or `"asl"` (the SARL baseline, stage 1 of the recipe).
        asl_gamma_neg (`float`, *optional*, defaults to `0.0`):
            Asymmetric loss focusing exponent of the negatives (the released COCO run: 0).
        asl_gamma_pos (`float`, *optional*, defaults to `0.0`):
            Asymmetric loss focusing exponent of the positives.
        asl_clip (`float`, *optional*, defaults to `0.0`):
            Asymmetric loss probability margin: negatives' probabilities are shifted down by it (0: no shift).
        asl_eps (`float`, *optional*, defaults to `1e-5`):
            Asymmetric loss clamp of the probabilities inside the logarithms.
        sscl_weight (`float`, *optional*, defaults to `100.0`):
            Weight of the sample-to-sample contrastive loss in the objective (100 in the paper).
        pscl_weight (`float`, *optional*, defaults to `50.0`):
            Weight of the prototype-to-sample contrastive loss in the objective (50 in the paper).
        sscl_temperature (`float`, *optional*, defaults to `0.2`):
            Temperature of the sample-to-sample contrastive loss.
        sscl_base_temperature (`float`, *optional*, defaults to `0.2`):
            Base temperature of the sample-to-sample contrastive loss (the loss is scaled by temperature / base).
        sscl_mode (`str`, *optional*, defaults to `"reference"`):
            One of `SSCL_MODES`: `"reference"` (as the released code, the paper's numbers) or `"corrected"` (as the
            paper's equation).
        pscl_temperature (`float`, *optional*, defaults to `0.07`):
            Temperature of the prototype-to-sample contrastive loss.
        gather_contrastive_features (`bool`, *optional*, defaults to `False`):
            In multi-process training, SSCL and PSCL contrast the features of all processes (differentiable
            all-gather) instead of each process's own batch (the paper's behaviour).
        memory_bank_threshold (`float`, *optional*, defaults to `0.8`):
            A positive label-level feature enters the memory bank when its sigmoid(logit) exceeds this.
        prototype_threshold (`float`, *optional*, defaults to `0.85`):
            Probability a positive needs to contribute to its class prototype (stage-2 initialisation, online
            prototypes).
        thresholds (`list[float]`, *optional*, defaults to `None`):
            Per-class decision thresholds [K] in [0, 1] (calibrated, `sadcl_hf.analysis.calibration`); `None` means
            0.5 for every class.
        initializer_range (`float`, *optional*, defaults to `0.02`):
            transformers' standard initialiser scale, kept for its utilities; SADCL's own layers use Query2Label's
            initialisation (Xavier-uniform) and do not read it.

    Example:

    ```python
    >>> from sadcl_hf import SADCLConfig, SADCLForImageClassification

    >>> # the paper's MS-COCO model: ResNet-101 at 448 px, 80 classes
    >>> config = SADCLConfig.from_preset("paper-r101-448", use_pretrained_backbone=False)
    >>> model = SADCLForImageClassification(config)

    >>> # a small model for three classes of your own
    >>> config = SADCLConfig.from_preset("tiny", id2label={0: "cat", 1: "dog", 2: "car"})
    ```
    """

    model_type = "sadcl"
    # transformers' standard names; `num_hidden_layers` counts the decoder layers, the ones whose attentions and hidden
    # states `output_attentions` / `output_hidden_states` return.
    attribute_map = {
        "hidden_size": "hidden_dim",
        "num_hidden_layers": "num_decoder_layers",
        "intermediate_size": "dim_feedforward",
    }
    keys_to_ignore_at_inference = [
        "label_features",
        "projected_label_features",
        "attentions",
        "loss_terms",
    ]

    backbone: str = "resnet101.tv_in1k"
    use_timm_backbone: bool = True
    backbone_config: dict | PreTrainedConfig | None = None
    use_pretrained_backbone: bool = True
    backbone_kwargs: dict | None = None
    backbone_layer_norm: bool = False
    freeze_backbone_batch_norm: bool = True
    backbone_frozen_stages: int = 1
    image_size: int = 448
    hidden_dim: int = 2048
    num_encoder_layers: int = 1
    num_decoder_layers: int = 2
    num_attention_heads: int = 4
    dim_feedforward: int = 8192
    dropout: float | int = 0.1
    use_input_projection: bool | None = None
    projection_dim: int = 1024
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    objective: str = "sadcl"
    asl_gamma_neg: float | int = 0.0
    asl_gamma_pos: float | int = 0.0
    asl_clip: float | int = 0.0
    asl_eps: float = 1e-5
    sscl_weight: float | int = 100.0
    pscl_weight: float | int = 50.0
    sscl_temperature: float = 0.2
    sscl_base_temperature: float = 0.2
    sscl_mode: str = "reference"
    pscl_temperature: float = 0.07
    gather_contrastive_features: bool = False
    memory_bank_threshold: float = 0.8
    prototype_threshold: float = 0.85
    thresholds: list[float] | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        # results of a run live in the model card data (sadcl_hf/model_card.py), which reads this old field of a
        # saved config.json itself; the config holds the architecture only
        kwargs.pop("training_summary", None)
        if __name__ == "sadcl_hf.configuration_sadcl":
            # `custom_pipelines` names the checkpoint's image-classification pipeline for remote code; installed,
            # `import sadcl_hf` registers that pipeline itself, and the entry would make `pipeline()` demand
            # trust_remote_code=True (sadcl_hf/data/pipeline_image_classification.py).
            kwargs.pop("custom_pipelines", None)
        if self.problem_type is None:
            self.problem_type = "multi_label_classification"
        if isinstance(self.backbone_config, dict):
            values = dict(self.backbone_config)
            if "model_type" not in values:
                raise ValueError("backbone_config needs a 'model_type' entry (e.g. 'cvt')")
            self.backbone_config = AutoConfig.for_model(values.pop("model_type"), **values)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checks the fields against each other; raises `ValueError` naming the field."""
        super().validate_architecture()
        for name, expected in _NUMERIC_FIELDS.items():
            _check_number(name, getattr(self, name), expected)
        for name, (length, expected) in _NUMERIC_LIST_FIELDS.items():
            if getattr(self, name) is not None:
                _check_number_list(name, getattr(self, name), length or self.num_labels, expected)
        if self.problem_type not in (None, "multi_label_classification"):
            raise ValueError(
                f"problem_type {self.problem_type!r} is not supported: SADCL is a multi-label classifier (one sigmoid "
                "per class); use problem_type='multi_label_classification' (the default)"
            )
        self._check_label_names()
        if self.hidden_dim % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_dim ({self.hidden_dim}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_dim % 2 != 0:
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be even for the sine position encoding")
        if self.use_timm_backbone == (self.backbone_config is not None):
            raise ValueError(
                "backbone_config must be given exactly when use_timm_backbone is False "
                f"(use_timm_backbone={self.use_timm_backbone}, backbone_config={type(self.backbone_config).__name__})"
            )
        if self.objective not in ("sadcl", "asl"):
            raise ValueError(f"objective must be 'sadcl' or 'asl', got {self.objective!r}")
        if self.sscl_mode not in SSCL_MODES:
            raise ValueError(f"sscl_mode must be one of {SSCL_MODES}, got {self.sscl_mode!r}")

    def _check_label_names(self) -> None:
        """Raises `ValueError` when `id2label` does not name every class `0 .. num_labels - 1`, or gives one name to
        more than one class (the scores dict and `label2id` would collapse them)."""
        missing = [index for index in range(self.num_labels) if index not in self.id2label]
        if missing:
            raise ValueError(
                f"id2label must name every class 0..{self.num_labels - 1}; classes {missing[:10]} have no name "
                "(fix `id2label` in the model folder's config.json)"
            )
        indices_by_name: dict[str, list[int]] = {}
        for index, name in sorted(self.id2label.items()):
            indices_by_name.setdefault(name, []).append(index)
        for name, indices in indices_by_name.items():
            if len(indices) > 1:
                raise ValueError(
                    f"id2label gives the name {name!r} to classes {indices}: each class needs its own name"
                )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> SADCLConfig:
        """Builds a named configuration (`SADCL_PRESETS`), e.g. `from_preset("tiny", num_labels=3)`.

        Passing `num_labels` or `id2label` replaces the preset's label names.
        """
        if name not in SADCL_PRESETS:
            raise ValueError(f"unknown SADCL preset {name!r}; available: {sorted(SADCL_PRESETS)}")
        values = copy.deepcopy(SADCL_PRESETS[name])
        if "num_labels" in overrides or "id2label" in overrides or "label2id" in overrides:
            values.pop("id2label", None)
        values.update(overrides)
        return cls(**values)

    @property
    def label_names(self) -> list[str]:
        """The label names [K] in class-index order: the one way to read them (`id2label` may hold transformers'
        placeholders `LABEL_i`, see `sadcl_hf.evaluation.has_placeholder_label_names`)."""
        self._check_label_names()
        return [str(self.id2label[index]) for index in range(self.num_labels)]
