"""The `multi-label-image-classification` pipeline: every label whose sigmoid score reaches its decision threshold.

`import sadcl_hf` registers the task, so::

    import sadcl_hf
    from transformers import pipeline

    tagger = pipeline("multi-label-image-classification", model="path/or/repo")
    tagger("photo.jpg")                   # [{"label": "dog", "score": 0.97}, {"label": "person", "score": 0.81}]
    tagger(["a.jpg", "b.png"], batch_size=8, threshold=0.3)

The decision threshold of a label is, in order of precedence: the `threshold=` argument of the call (or of the
constructor), a number or one value per class; the per-class thresholds calibrated into `model.config.thresholds`
(see [`sadcl_hf.calibrate_thresholds`]); 0.5. A label is returned when its score is `>=` its threshold
([`sadcl_hf.evaluation.predict_labels`], the rule the metrics and calibration use), so `threshold=0.0` returns every
label with its score.

Images go through [`load_pipeline_image`] (`sadcl_hf.data.pipeline_image_classification`), as in the stock
`pipeline("image-classification")` of a SADCL model: URL downloads are bounded (`timeout=` seconds, default 10;
`max_bytes=`, default 50 MiB), and JPEGs are decoded at the image processor's size (DCT scaling).
"""

from __future__ import annotations

import numbers
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import AutoImageProcessor
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import IMAGE_PROCESSOR_NAME, cached_file

from ..data.images import DEFAULT_MAX_URL_BYTES, DEFAULT_URL_TIMEOUT
from ..data.pipeline_image_classification import SADCLImageClassificationPipeline, load_pipeline_image
from ..evaluation import (
    MULTI_LABEL_TASK,
    has_placeholder_label_names,
    predict_labels,
    resolve_thresholds,
    sigmoid,
)
from ..image_processing import image_processor_for_config

__all__ = [
    "DEFAULT_MAX_URL_BYTES",
    "DEFAULT_URL_TIMEOUT",
    "MULTI_LABEL_TASK",
    "DeferredModel",
    "MultiLabelImageClassificationPipeline",
    "load_pipeline",
    "load_pipeline_image",
    "register_pipeline",
]

STOCK_TASK = "image-classification"


class MultiLabelImageClassificationPipeline(SADCLImageClassificationPipeline):
    """Multi-label image tagging with any `AutoModelForImageClassification` that scores classes independently
    (sigmoid), such as SADCL.

    Returns, per image, the labels whose probability reaches their threshold, as `[{"label", "score"}]` sorted by
    decreasing score (possibly empty). Inputs, batching (`batch_size=`), `device=`, `dtype=` and `timeout=` work as in
    transformers' `ImageClassificationPipeline`; every image goes through [`load_pipeline_image`].

    Call or constructor arguments:
        threshold (`float` or `list[float]`, *optional*): one threshold for every class, or one per class (length
            `num_labels`); default `model.config.thresholds`, else 0.5.
        top_k (`int`, *optional*): return at most this many labels per image (the highest scores).
        timeout (`float`, *optional*): seconds an image URL may take (default 10).
        max_bytes (`int`, *optional*): largest image download in bytes (default 50 MiB).

    Constructor argument:
        backend (`str`, *optional*): `"pytorch"` (default); `"onnx"` or `"onnx-int8"` serve the model folder's
            exported graphs with ONNX Runtime instead, without loading the PyTorch weights (the table:
            [`sadcl_hf.serving.backends.BACKENDS`]; `scripts/export_onnx.py` writes the graphs).
    """

    def __init__(self, *args, backend: str = "pytorch", **kwargs):
        from .backends import BACKENDS, load_backend_model
        from .onnx_runtime import SADCLOnnxModel

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
        model = kwargs["model"] if "model" in kwargs else args[0]
        if isinstance(model, DeferredModel):  # `pipeline(task, model="path")`: loaded now, on its backend only
            model = load_backend_model(model.name_or_path, backend, **model.kwargs)
        elif backend != "pytorch" and not isinstance(model, SADCLOnnxModel):
            model = load_backend_model(model.name_or_path, backend)
        if isinstance(model, SADCLOnnxModel) and kwargs.get("device") is None:
            kwargs["device"] = "cpu"  # onnxruntime takes and returns host arrays whatever its provider
        if "model" in kwargs:
            kwargs["model"] = model
        else:
            args = (model, *args[1:])
        super().__init__(*args, **kwargs)
        self.label_names = self.model.config.label_names
        if has_placeholder_label_names(self.model.config):
            warnings.warn(
                f"The model config has no label names (id2label holds the placeholders LABEL_0 ... "
                f"LABEL_{len(self.label_names) - 1}); predictions will carry these placeholders. Set `id2label` in "
                "config.json.",
                UserWarning,
                stacklevel=2,
            )

    def check_model_type(self, supported_models):
        from .onnx_runtime import SADCLOnnxModel

        if not isinstance(self.model, SADCLOnnxModel):
            super().check_model_type(supported_models)

    def _sanitize_parameters(self, threshold=None, top_k=None, timeout=None, max_bytes=None):
        preprocess_params = {}
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        if max_bytes is not None:
            preprocess_params["max_bytes"] = max_bytes
        postprocess_params = {}
        if threshold is not None:
            postprocess_params["threshold"] = resolve_thresholds(threshold, self.model.config)
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
                raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
            postprocess_params["top_k"] = int(top_k)
        return preprocess_params, {}, postprocess_params

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Saves the model and the image processor. Unlike transformers' custom pipelines, the pipeline's code is not
        copied: it comes with sadcl-hf (`import sadcl_hf` registers the task), and the saved model alone loads with
        `trust_remote_code=True` elsewhere."""
        os.makedirs(save_directory, exist_ok=True)
        self.model.save_pretrained(save_directory, **kwargs)
        self.image_processor.save_pretrained(save_directory, **kwargs)

    def decision_thresholds(self, threshold: float | Sequence[float] | None = None) -> np.ndarray:
        """The thresholds [K] a call with `threshold` would apply (see [`resolve_thresholds`])."""
        if threshold is None:
            threshold = self._postprocess_params.get("threshold")
        return resolve_thresholds(threshold, self.model.config)

    def loads_images_with_the_package(self) -> bool:
        return True

    def postprocess(self, model_outputs, threshold=None, top_k=None):
        logits = model_outputs["logits"][0].float().numpy().astype(np.float64)
        scores = sigmoid(logits)
        thresholds = self.decision_thresholds(threshold)
        selected = np.flatnonzero(predict_labels(scores, thresholds))
        ranked = selected[np.argsort(-scores[selected], kind="stable")]
        if top_k is not None:
            ranked = ranked[:top_k]
        return [{"label": self.label_names[index], "score": float(scores[index])} for index in ranked]


class DeferredModel:
    """The model `pipeline("multi-label-image-classification", model="path")` hands the pipeline: only its name and
    loading arguments, so that the pipeline loads it on its `backend=` ([`sadcl_hf.serving.backends.BACKENDS`])
    and an ONNX backend never loads the PyTorch weights."""

    def __init__(self, name_or_path: str, kwargs: dict[str, Any]):
        self.name_or_path = name_or_path
        self.kwargs = {key: value for key, value in kwargs.items() if key not in ("config", "_from_pipeline")}

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> DeferredModel:
        return cls(name_or_path, kwargs)


def load_pipeline(
    model_name_or_path: str, device: str | None = None, revision: str | None = None, backend: str = "pytorch"
) -> MultiLabelImageClassificationPipeline:
    """The multi-label pipeline of a model folder or Hub id on `backend` (`"pytorch"`; `"onnx"`, `"onnx-int8"`: the
    folder's exported graphs, on the CPU; see [`sadcl_hf.serving.backends.BACKENDS`]). A folder without an image
    processor gets the config's preprocessing, with a warning; an unreadable one (not valid JSON) is an error naming
    the file."""
    from .backends import load_backend_model

    model = load_backend_model(model_name_or_path, backend, revision)
    processor_file = cached_file(
        model_name_or_path, IMAGE_PROCESSOR_NAME, revision=revision, _raise_exceptions_for_missing_entries=False
    )
    if processor_file is None:
        print(
            f"warning: {model_name_or_path} has no image processor; using the config's preprocessing", file=sys.stderr
        )
        image_processor = image_processor_for_config(model.config)
    else:  # a file that is there but unreadable raises transformers' error naming it
        image_processor = AutoImageProcessor.from_pretrained(model_name_or_path, revision=revision)
    return MultiLabelImageClassificationPipeline(model=model, image_processor=image_processor, device=device)


def register_pipeline() -> None:
    """Registers the `multi-label-image-classification` task with transformers' `pipeline()`, and makes
    [`SADCLImageClassificationPipeline`] the pipeline class of the stock `image-classification` task, which keeps
    transformers' behaviour for other models and its default model (idempotent)."""
    stock = PIPELINE_REGISTRY.supported_tasks[STOCK_TASK]
    if stock["impl"] is not SADCLImageClassificationPipeline:
        PIPELINE_REGISTRY.supported_tasks[STOCK_TASK] = {**stock, "impl": SADCLImageClassificationPipeline}
    registered = PIPELINE_REGISTRY.supported_tasks.get(MULTI_LABEL_TASK)
    if registered is not None and registered["impl"] is MultiLabelImageClassificationPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        MULTI_LABEL_TASK,
        pipeline_class=MultiLabelImageClassificationPipeline,
        pt_model=DeferredModel,
        type="image",
    )
