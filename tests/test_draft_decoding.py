"""Decoding at the size the model needs (issue 19.1): JPEG DCT-domain downscaling (`PIL.Image.draft`) to the
smallest scale not below twice the image processor's resize target (`DRAFT_MARGIN`), then the processor's own
resize. Fidelity against the
full decode is measured on digit mosaics saved as JPEGs at 4x and at phone size, on the calibration tests' images and
on real photographs: every score within 0.01, tags unchanged at calibrated-like thresholds."""

import io

import numpy as np
import PIL.Image
import pytest
import torch
from sklearn.datasets import load_sample_images
from transformers import ViTImageProcessor, pipeline

from sadcl_hf import MULTI_LABEL_TASK
from sadcl_hf.data import ImageLoadError, load_image, load_multilabel_dataset
from sadcl_hf.data.images import DRAFT_MARGIN, processor_draft_size
from sadcl_hf.evaluation import sigmoid
from sadcl_hf.image_processing import eval_collator_for_config, image_processor_for_config

from .conftest import make_tiny_model

PHONE_SIZE = (4032, 3024)
NUM_IMAGES = 24


def jpeg_bytes(image: PIL.Image.Image, quality: int = 90, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, **options)
    return buffer.getvalue()


def test_draft_size_is_the_processors_fixed_resize_target():
    config = make_tiny_model().config
    assert processor_draft_size(image_processor_for_config(config)) == (config.image_size, config.image_size)
    assert processor_draft_size(ViTImageProcessor(size={"height": 32, "width": 96})) == (96, 32)
    assert processor_draft_size(ViTImageProcessor(do_resize=False)) is None  # no resize: keep the exact decode
    assert processor_draft_size(ViTImageProcessor(size={"shortest_edge": 224})) is None  # size follows the aspect


def test_jpegs_decode_at_the_smallest_scale_not_below_twice_the_target():
    assert DRAFT_MARGIN == 2
    photo = PIL.Image.new("RGB", PHONE_SIZE, (120, 80, 40))
    data = jpeg_bytes(photo)
    assert load_image(data).size == PHONE_SIZE
    assert load_image(data, draft_size=(64, 64)).size == (504, 378)  # 1/8
    assert load_image(data, draft_size=(224, 224)).size == (1008, 756)  # 1/4: 1/8 would give 378 < 448 rows
    assert load_image(data, draft_size=(448, 448)).size == (2016, 1512)  # 1/2
    assert load_image(data, draft_size=(2016, 10)).size == PHONE_SIZE  # 1/2 would give 2016 < 4032 columns
    png = io.BytesIO()
    photo.resize((400, 300)).save(png, format="PNG")
    assert load_image(png.getvalue(), draft_size=(64, 64)).size == (400, 300)  # only JPEG decoders scale


def test_draft_size_accounts_for_a_90_degree_exif_rotation():
    """Stored 2048x256 with orientation 6: the upright image is 256 wide and 2048 tall. A draft that ignored the
    rotation would scale by 1/8 and give an upright image 32 wide, below the target's 128 columns."""
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    data = jpeg_bytes(PIL.Image.new("RGB", (2048, 256), (10, 200, 30)), exif=exif)
    upright = load_image(data, draft_size=(128, 16))
    assert upright.width >= 2 * 128 and upright.height >= 2 * 16
    assert upright.size == load_image(data).size == (256, 2048)
    assert load_image(data, draft_size=(16, 128)).size == (32, 256)  # the upright target fits 1/8 here


def test_draft_decoding_raises_the_same_errors(tmp_path, monkeypatch):
    data = jpeg_bytes(PIL.Image.new("RGB", (640, 480), (1, 2, 3)))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[:200])
    for draft_size in (None, (64, 64)):
        with pytest.raises(ImageLoadError, match=r"truncated\.jpg: corrupt or truncated image"):
            load_image(str(truncated), draft_size=draft_size)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 200_000)  # the bomb limit applies to the stored size
    with pytest.raises(ImageLoadError, match="640x480 = 307200 pixels exceeds"):
        load_image(data, draft_size=(8, 8))  # though 1/8 of it (80x60) would be small


# ---------------------------------------------------------------------------------------------------- fidelity


@pytest.fixture(scope="module")
def tagger_and_mosaics(tmp_path_factory):
    """A tiny model's multi-label pipeline and the digit-mosaics test split (64 px)."""
    model = make_tiny_model(num_labels=10, seed=0).eval()
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    image_processor_for_config(model.config).save_pretrained(folder)
    options = dict(num_train=8, num_validation=8, num_test=NUM_IMAGES, cache_dir=tmp_path_factory.mktemp("digits"))
    test = load_multilabel_dataset("digits-mosaic", split="test", **options)
    return pipeline(MULTI_LABEL_TASK, model=str(folder), device="cpu"), [row["image"] for row in test]


def full_decode_scores(tagger, sources) -> np.ndarray:
    """[N, K] sigmoid scores of `sources` decoded at full size, then the processor's resize."""
    pixel_values = tagger.image_processor(images=[load_image(s) for s in sources], return_tensors="pt")
    with torch.no_grad():
        return sigmoid(tagger.model(pixel_values["pixel_values"]).logits.double().numpy())


def draft_scores(tagger, sources) -> np.ndarray:
    """[N, K] scores through the pipeline, which decodes JPEGs at the processor's size."""
    names = tagger.model.config.label_names
    outputs = tagger(sources, threshold=0.0, batch_size=8)
    return np.array([[{o["label"]: o["score"] for o in output}[name] for name in names] for output in outputs])


def assert_faithful(tagger, sources, what: str) -> None:
    """Every score within 0.01 of the full decode's, and >= 99.5 % of the tag decisions unchanged at thresholds
    placed at each class's median score (as calibrated thresholds would be on these images; half of the decisions
    positive, the hardest place for them to flip; a random-init model's scores never reach 0.5)."""
    full, drafted = full_decode_scores(tagger, sources), draft_scores(tagger, sources)
    thresholds = np.median(full, axis=0)
    tags_full, tags_drafted = full >= thresholds, drafted >= thresholds
    assert np.abs(full - drafted).max() < 0.01, f"{what}: largest score change {np.abs(full - drafted).max():.4f}"
    agreement = (tags_full == tags_drafted).mean()
    assert agreement >= 0.995, f"{what}: {agreement:.2%} of the tag decisions unchanged"


@pytest.mark.parametrize("size", [(256, 256), PHONE_SIZE], ids=["4x", "phone"])
def test_draft_decoding_scores_digit_mosaics_as_the_full_decode(tagger_and_mosaics, size):
    tagger, images = tagger_and_mosaics
    sources = [jpeg_bytes(image.resize(size, PIL.Image.Resampling.BICUBIC)) for image in images]
    assert load_image(sources[0], draft_size=(64, 64)).width < size[0]  # the draft really scaled
    assert_faithful(tagger, sources, f"digit mosaics at {size}")


def test_draft_decoding_scores_photographs_and_calibration_images_as_the_full_decode(tagger_and_mosaics):
    tagger, _ = tagger_and_mosaics
    photos = [PIL.Image.fromarray(array) for array in load_sample_images().images]
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # a phone photo taken in portrait
    sources = [jpeg_bytes(photo.resize(PHONE_SIZE, PIL.Image.Resampling.BICUBIC), exif=exif) for photo in photos]
    sources += [jpeg_bytes(photo) for photo in photos]
    calibration = [  # tests/test_calibration.py's images (random noise, the hardest case for DCT scaling) at 4x
        PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8))
        for seed in range(NUM_IMAGES)
    ]
    sources += [jpeg_bytes(image.resize((256, 192), PIL.Image.Resampling.NEAREST)) for image in calibration]
    assert_faithful(tagger, sources, "photographs and calibration images")


def test_evaluation_batches_decode_as_the_pipeline(tagger_and_mosaics):
    """The evaluation collator (training-time evaluation, calibration, prototypes) drafts as the pipeline does."""
    tagger, images = tagger_and_mosaics
    sources = [jpeg_bytes(image.resize(PHONE_SIZE)) for image in images[:4]]
    collator = eval_collator_for_config(tagger.model.config, tagger.image_processor)
    batch = collator([{"image": {"path": None, "bytes": data}, "labels": []} for data in sources])
    expected = torch.cat([tagger.preprocess(data)["pixel_values"] for data in sources])
    torch.testing.assert_close(batch["pixel_values"], expected, atol=1e-6, rtol=0)
