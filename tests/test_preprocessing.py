"""One preprocessing path: training-time evaluation, prototypes, calibration, predict and the pipeline all feed the
model the tensors of its saved image processor, on real photographs of odd sizes and pixel modes."""

import io
import json

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from sklearn.datasets import load_sample_images
from transformers import AutoImageProcessor, pipeline

from sadcl_hf.analysis.calibration import predict_scores
from sadcl_hf.data import load_image, load_multilabel_dataset, multilabel_features
from sadcl_hf.evaluation import mean_average_precision
from sadcl_hf.image_processing import (
    encoded_images,
    eval_collator_for_config,
    evaluation_dataloader,
    image_processor_for_config,
    processor_draft_size,
)
from sadcl_hf.training.arguments import SADCLTrainingArguments
from sadcl_hf.training.prototypes import compute_dataset_prototypes
from sadcl_hf.training.trainer import SADCLTrainer

from .conftest import make_tiny_model

IMAGE_SIZE = 48  # not the photos' sizes, so every path resizes


def encoded(image: PIL.Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    """Real photographs (scikit-learn's sample images) as files of odd sizes and modes."""
    china, flower = (PIL.Image.fromarray(array) for array in load_sample_images().images)
    rgba = flower.resize((301, 211)).convert("RGBA")
    rgba.putalpha(PIL.Image.linear_gradient("L").resize(rgba.size))  # transparent to opaque
    files = {
        "rgb_333x517.jpg": encoded(china.resize((333, 517)), "JPEG", quality=90),
        "rgba.png": encoded(rgba, "PNG"),
        "grayscale_L.png": encoded(china.convert("L").resize((250, 170)), "PNG"),
        "palette_P.png": encoded(flower.quantize(64).resize((190, 260)), "PNG"),
        "cmyk.jpg": encoded(china.crop((100, 50, 420, 290)).convert("CMYK"), "JPEG", quality=92),
        "one_pixel.png": encoded(flower.resize((1, 1)), "PNG"),
    }
    folder = tmp_path_factory.mktemp("photos")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: str(folder / name) for name in files}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny model folder as training saves it: weights, config and `image_processor_for_config`."""
    model = make_tiny_model(num_labels=3, seed=2, image_size=IMAGE_SIZE).eval()
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    image_processor_for_config(model.config).save_pretrained(folder)
    return model, folder


class PixelRecorder:
    """Wraps `model.forward` to keep every `pixel_values` batch it receives."""

    def __init__(self, model):
        self.batches = []
        self.forward = model.forward
        model.forward = self

    def __call__(self, pixel_values, **kwargs):
        self.batches.append(pixel_values.detach().clone())
        return self.forward(pixel_values, **kwargs)

    def pixels(self) -> torch.Tensor:
        return torch.cat(self.batches)


def test_saved_processor_is_a_stock_transformers_processor(saved_model):
    _, folder = saved_model
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    assert "auto_map" not in settings  # no remote code: loads without sadcl-hf
    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(processor).__module__.startswith("transformers.")
    assert processor.size == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}


def test_every_path_gives_the_same_tensors_on_odd_photographs(saved_model, photo_files):
    model, folder = saved_model
    names = sorted(photo_files)
    dataset = datasets.Dataset.from_dict(
        {"image": [photo_files[name] for name in names], "labels": [[index % 3] for index in range(len(names))]},
        features=multilabel_features(["a", "b", "c"]),
    )
    processor = image_processor_for_config(model.config)
    draft_size = processor_draft_size(processor)  # JPEGs decode at the processor's size on every path
    reference = torch.stack(
        [
            processor(images=load_image(photo_files[name], draft_size=draft_size), return_tensors="pt")["pixel_values"][
                0
            ]
            for name in names
        ]
    )
    assert reference.shape == (len(names), 3, IMAGE_SIZE, IMAGE_SIZE) and torch.isfinite(reference).all()

    paths = {}
    encoded = dataset.cast_column("image", datasets.Image(decode=False))  # as evaluation_dataloader passes them
    paths["evaluation collator"] = eval_collator_for_config(model.config)(list(encoded))["pixel_values"]
    paths["evaluation_dataloader (in order)"] = torch.cat(
        [batch["pixel_values"] for batch in evaluation_dataloader(model.config, dataset, batch_size=4)]
    )
    tagger = pipeline("multi-label-image-classification", model=str(folder))
    paths["pipeline (model folder)"] = torch.cat(
        [tagger.preprocess(photo_files[name])["pixel_values"] for name in names]
    )
    saved_processor = AutoImageProcessor.from_pretrained(folder)
    paths["predict / calibration (AutoImageProcessor)"] = torch.cat(
        [
            saved_processor(images=tagger.load_image(photo_files[name]), return_tensors="pt")["pixel_values"]
            for name in names
        ]
    )
    recorder = PixelRecorder(model)
    try:
        compute_dataset_prototypes(model, dataset, batch_size=4, progress_bar=False)
        paths["prototypes"] = recorder.pixels()
        recorder.batches.clear()
        scores, _ = predict_scores(model, dataset, batch_size=4)
        paths["calibration"] = recorder.pixels()
    finally:
        del model.forward
    for name, pixels in paths.items():
        torch.testing.assert_close(
            pixels.float(), reference, atol=1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}"
        )

    pipeline_scores = [
        {item["label"]: item["score"] for item in tagger(photo_files[name], threshold=0.0)} for name in names
    ]
    np.testing.assert_allclose(
        scores, [[row[label] for label in model.config.label_names] for row in pipeline_scores], atol=1e-5
    )


def test_trainer_evaluate_map_equals_the_pipelines(saved_model, tmp_path):
    """`trainer.evaluate()` (the metrics a run reports) and the pipeline (the model a user serves) agree: the split
    stays encoded as in `run_training` ([`encoded_images`]), so both decode each JPEG at the processor's draft size."""
    model = make_tiny_model(num_labels=10, seed=3, image_size=IMAGE_SIZE).eval()
    split = load_multilabel_dataset(
        "digits-mosaic",
        split="validation",
        num_train=8,
        num_validation=40,
        num_test=8,
        image_size=72,
        cache_dir=tmp_path / "cache",
    )
    arguments = SADCLTrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_eval_batch_size=16, report_to=[], use_cpu=True, use_ema=False
    )
    jpegs = []
    for image in split["image"]:  # 256 px JPEGs, decoded at half size for a 48 px model: draft decoding matters
        buffer = io.BytesIO()
        image.convert("RGB").resize((256, 256), PIL.Image.BICUBIC).save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    decoded = datasets.Dataset.from_dict(
        {"image": jpegs, "labels": split["labels"]}, features=multilabel_features(model.config.label_names)
    )
    encoded = encoded_images(decoded)  # as `run_training` prepares the evaluation split
    assert isinstance(encoded[0]["image"], dict) and isinstance(decoded[0]["image"], PIL.Image.Image)
    trainer = SADCLTrainer(
        model=model,
        args=arguments,
        eval_dataset=encoded,
        data_collator=eval_collator_for_config(model.config),
        eval_data_collator=eval_collator_for_config(model.config),
    )
    reported = trainer.evaluate()["eval_map"]

    model.save_pretrained(tmp_path / "model")
    image_processor_for_config(model.config).save_pretrained(tmp_path / "model")
    tagger = pipeline("multi-label-image-classification", model=str(tmp_path / "model"))
    outputs = tagger(jpegs, threshold=0.0, batch_size=8)
    scores = np.array(
        [[{o["label"]: o["score"] for o in output}[name] for name in model.config.label_names] for output in outputs]
    )
    targets = np.zeros_like(scores)
    for row, labels in enumerate(split["labels"]):
        targets[row, labels] = 1
    assert abs(mean_average_precision(scores, targets) - reported) < 1e-4


def test_evaluation_collator_pickles_for_dataloader_workers(saved_model, photo_files):
    import pickle

    model, _ = saved_model
    collator = eval_collator_for_config(model.config)
    examples = [{"image": photo_files["cmyk.jpg"], "labels": [1]}, {"image": photo_files["rgba.png"], "labels": []}]
    restored = pickle.loads(pickle.dumps(collator))
    assert torch.equal(restored(examples)["pixel_values"], collator(examples)["pixel_values"])
