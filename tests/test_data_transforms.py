"""Training / evaluation transforms (TSN multi-scale crop) and the multi-label collator."""

import io
import logging
import pickle

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from torchvision.transforms import v2

from sadcl_hf import SADCLConfig
from sadcl_hf.data import (
    DEFAULT_CROP_SCALES,
    ImageLoadError,
    ImageProcessorTransform,
    MultiLabelCollator,
    MultiScaleCrop,
    ToNormalizedTensor,
    build_train_transform,
    load_image,
    multilabel_features,
)
from sadcl_hf.image_processing import image_processor_for_config

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def eval_transform(image_size: int) -> ImageProcessorTransform:
    """The evaluation preprocessing of a model of this size: its saved image processor."""
    config = SADCLConfig.from_preset("tiny", num_labels=2, image_size=image_size, image_mean=MEAN, image_std=STD)
    return ImageProcessorTransform(image_processor_for_config(config))


def tsn_reference_crops(image_side: int, output_side: int, scales, max_distort: int) -> set:
    """Crop sizes allowed by TSN's `MultiScaleCrop._sample_crop_size` for a square input."""
    sides = [int(image_side * scale) for scale in scales]
    sides = [output_side if abs(side - output_side) < 3 else side for side in sides]
    return {(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= max_distort}


def png_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_multiscale_crop_matches_tsn_sampling():
    crop = MultiScaleCrop(32, scales=DEFAULT_CROP_SCALES, max_distort=2)
    candidates = set(crop.crop_candidates(40, 40))
    assert candidates == tsn_reference_crops(40, 32, DEFAULT_CROP_SCALES, 2)
    assert (32, 20) in candidates and (40, 20) not in candidates  # |i - j| <= 2 only
    image = torch.zeros(3, 40, 40)
    torch.manual_seed(0)
    seen_sizes, seen_offsets = set(), set()
    for _ in range(400):
        params = crop.make_params([image])
        size = (params["height"], params["width"])
        assert size in candidates
        allowed = MultiScaleCrop.fixed_offset_candidates(40, 40, *size)
        assert (params["top"], params["left"]) in allowed
        assert params["top"] + params["height"] <= 40 and params["left"] + params["width"] <= 40
        seen_sizes.add(size)
        seen_offsets.add((params["top"], params["left"]))
    assert seen_sizes == candidates
    assert len(seen_offsets) > 13
    assert crop(image).shape == (3, 32, 32)

    uniform = MultiScaleCrop((16, 24), scales=(0.5,), max_distort=0, fixed_offsets=False)
    draws = [uniform.make_params([torch.zeros(3, 50, 100)]) for _ in range(200)]
    assert {(p["height"], p["width"]) for p in draws} == {(25, 24)}  # 25 wide snaps to the 24-px output width
    assert all(0 <= p["top"] <= 25 and 0 <= p["left"] <= 76 for p in draws)
    assert len({(p["top"], p["left"]) for p in draws}) > 100 and max(p["left"] for p in draws) > 50
    assert uniform(PIL.Image.new("RGB", (100, 50))).size == (24, 16)


def test_multiscale_crop_is_a_real_crop():
    """A crop of a coordinate ramp keeps the pixels of the chosen window, resized."""
    ramp = torch.arange(40, dtype=torch.float32).repeat(40, 1)[None].repeat(3, 1, 1)  # value = column index
    crop = MultiScaleCrop(20, scales=(0.5,), max_distort=0)
    torch.manual_seed(3)
    params = crop.make_params([ramp])
    out = crop.transform(ramp, params)
    assert out.shape == (3, 20, 20)
    assert abs(out[0, 0, 0].item() - params["left"]) < 1.0
    assert abs(out[0, 0, -1].item() - (params["left"] + params["width"] - 1)) < 1.0


def test_train_and_eval_transforms():
    gray = load_image(PIL.Image.new("L", (70, 50), 128))
    torch.manual_seed(0)
    train = build_train_transform(32, MEAN, STD, resize_margin=8)
    out = train(gray)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="expects an RGB image, got mode 'L'.*load_image"):
        train(PIL.Image.new("L", (70, 50)))

    evaluation = eval_transform(24)
    rgba = load_image(PIL.Image.new("RGBA", (30, 10), (255, 0, 0, 0)))  # fully transparent -> white
    torch.testing.assert_close(evaluation(rgba)[:, 5, 5], (1 - torch.tensor(MEAN)) / torch.tensor(STD))
    assert evaluation(rgba).shape == (3, 24, 24)

    torch.manual_seed(1)
    augmented = build_train_transform(32, MEAN, STD, randaugment=True, cutout=True)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    first = augmented(image)
    torch.manual_seed(1)
    assert torch.equal(first, augmented(image))  # reproducible from the torch seed
    assert first.shape == (3, 32, 32)


def test_to_normalized_tensor_matches_torchvision():
    photo = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    torchvision_steps = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    expected = torchvision_steps(photo)
    for source in (photo, v2.functional.pil_to_tensor(photo)):
        out = ToNormalizedTensor(MEAN, STD)(source)
        assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.is_contiguous()
        torch.testing.assert_close(out, expected.as_subclass(torch.Tensor), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="uint8 tensor"):
        ToNormalizedTensor(MEAN, STD)(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="std > 0"):
        ToNormalizedTensor(MEAN, (0.2, 0.0, 0.2))


def test_crop_with_input_size_draws_as_after_the_resize_and_resamples_once():
    """`input_size` draws the recipe's crop on the virtual resized image: the same parameters, for any source size,
    as resizing first, and the same window (on coordinate ramps, where interpolation is exact, within one level; a
    window one pixel off differs by ~3 levels) resampled once from the original pixels."""
    ramps = np.zeros((168, 224, 3), np.uint8)
    ramps[..., 0], ramps[..., 1] = np.arange(224)[None, :], np.arange(168)[:, None]  # value = column / row
    image = PIL.Image.fromarray(ramps)
    crop = MultiScaleCrop(48, input_size=56)
    two_steps = v2.Compose([v2.Resize((56, 56)), MultiScaleCrop(48)])
    for seed in range(30):
        torch.manual_seed(seed)
        params = crop.make_params([image])
        torch.manual_seed(seed)
        assert params == MultiScaleCrop(48).make_params([image.resize((56, 56))])
        torch.manual_seed(seed)
        once = np.asarray(crop(image), dtype=np.float64)
        torch.manual_seed(seed)
        twice = np.asarray(two_steps(image), dtype=np.float64)
        assert once.shape == twice.shape == (48, 48, 3)
        assert np.abs(once - twice)[4:-4, 4:-4].max() <= 1.0  # borders aside: the filters' edge handling
        pixels = v2.functional.pil_to_tensor(image)
        torch.manual_seed(seed)
        tensor_out = crop(pixels)
        torch.manual_seed(seed)
        assert torch.equal(tensor_out, two_steps(pixels))  # tensors take the two resizes
    with pytest.raises(ValueError, match="input_size must be"):
        MultiScaleCrop(48, input_size=0)


def test_train_transform_augmentation_distribution_is_kept():
    """The TSN crop sizes and offsets of the recipe, on the 512-px square the old two-step pipeline cropped."""
    transform = build_train_transform(32, MEAN, STD, resize_margin=8)
    crop = transform.transforms[0]
    assert isinstance(crop, MultiScaleCrop) and crop.input_size == (40, 40) and crop.size == (32, 32)
    assert set(crop.crop_candidates(40, 40)) == tsn_reference_crops(40, 32, DEFAULT_CROP_SCALES, 2)
    ramp = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (100, 1, 3))  # value = column index
    torch.manual_seed(0)
    lefts = set()
    for _ in range(300):
        params = crop.make_params([PIL.Image.fromarray(ramp)])
        assert (params["top"], params["left"]) in MultiScaleCrop.fixed_offset_candidates(
            40, 40, params["height"], params["width"]
        )
        lefts.add(params["left"])
    assert len(lefts) > 3


def test_horizontal_flip_happens_half_the_time():
    left_white = np.zeros((16, 16, 3), dtype=np.uint8)
    left_white[:, :8] = 255
    image = PIL.Image.fromarray(left_white)
    transform = build_train_transform(16, (0, 0, 0), (1, 1, 1), resize_margin=0, scales=(1.0,), max_distort=0)
    torch.manual_seed(0)
    flipped = sum(transform(image)[0, 8, 0].item() < 0.5 for _ in range(200))
    assert 60 < flipped < 140
    no_flip = build_train_transform(16, (0, 0, 0), (1, 1, 1), resize_margin=0, scales=(1.0,), hflip=False)
    assert all(no_flip(image)[0, 8, 0].item() > 0.5 for _ in range(20))


def test_collator_batches_and_labels():
    collator = MultiLabelCollator(4, transform=eval_transform(16))
    examples = [
        {"image": PIL.Image.new("RGB", (20, 30), "red"), "labels": [0, 3]},
        {"image": PIL.Image.new("L", (50, 10), 20), "labels": []},
        {"image": png_bytes(PIL.Image.new("RGBA", (8, 8))), "labels": np.array([2])},
        {"image": {"path": None, "bytes": png_bytes(PIL.Image.new("P", (5, 5)))}, "labels": torch.tensor([1, 1])},
    ]
    batch = collator(examples)
    assert set(batch) == {"pixel_values", "labels"}
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["pixel_values"].dtype == torch.float32
    expected = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.float32)
    assert torch.equal(batch["labels"], expected)


def test_collator_without_transform():
    collator = MultiLabelCollator(2)
    batch = collator([{"image": PIL.Image.new("RGB", (4, 3), (255, 0, 0)), "labels": [1]}] * 2)
    assert batch["pixel_values"].shape == (2, 3, 3, 4)
    assert batch["pixel_values"][0, 0].eq(1).all() and batch["pixel_values"][0, 1].eq(0).all()
    with pytest.raises(ValueError, match="different sizes"):
        collator([{"image": PIL.Image.new("RGB", size), "labels": []} for size in ((4, 3), (3, 3))])


def test_collator_bad_labels_and_columns():
    collator = MultiLabelCollator(3)
    image = PIL.Image.new("RGB", (4, 4))
    with pytest.raises(ValueError, match=r"Example 1: label id 3 is out of range for num_labels=3"):
        collator([{"image": image, "labels": [0]}, {"image": image, "labels": [3]}])
    with pytest.raises(ValueError, match="out of range"):
        collator([{"image": image, "labels": [-1]}])
    with pytest.raises(ValueError, match="integer class ids, got 'cat'"):
        collator([{"image": image, "labels": ["cat"]}])
    with pytest.raises(ValueError, match="must be a list of class ids"):
        collator([{"image": image, "labels": 2}])
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        collator([{"pixel": image, "labels": [0]}])
    with pytest.raises(ValueError, match="positive integer"):
        MultiLabelCollator(0)


def test_collator_skips_unreadable_images(tmp_path, caplog):
    good = tmp_path / "good.png"
    PIL.Image.new("RGB", (6, 6), "blue").save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    dataset = datasets.Dataset.from_dict(
        {"image": [str(good), str(bad), str(good)], "labels": [[0], [1], [2]]},
        features=multilabel_features(["a", "b", "c"]),
    ).cast_column("image", datasets.Image(decode=False))
    examples = [dataset[i] for i in range(3)]

    with pytest.raises(ImageLoadError, match=r"bad\.jpg"):
        MultiLabelCollator(3)(examples)
    with caplog.at_level(logging.WARNING):
        batch = MultiLabelCollator(3, max_unreadable_fraction=0.5)(examples)
    assert f"Skipping unreadable image {bad}" in caplog.text
    # the unreadable example is replaced by a readable one of the batch, with its labels: the batch keeps its size
    assert torch.equal(batch["labels"], torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]]))
    with pytest.raises(ImageLoadError, match="every image of the batch"):
        MultiLabelCollator(3, max_unreadable_fraction=0.5)([examples[1]])


def test_collator_pickles_and_works_with_dataloader_workers(tmp_path):
    paths = []
    for index in range(6):
        paths.append(str(tmp_path / f"{index}.png"))
        PIL.Image.new("RGB", (10 + index, 12), (index * 40, 0, 0)).save(paths[-1])
    dataset = datasets.Dataset.from_dict(
        {"image": paths, "labels": [[index % 3] for index in range(6)]}, features=multilabel_features(["a", "b", "c"])
    )
    collator = MultiLabelCollator(3, transform=build_train_transform(8, MEAN, STD, resize_margin=4))
    restored = pickle.loads(pickle.dumps(collator))
    assert restored.num_labels == 3 and restored(dataset.select([0, 1]))["pixel_values"].shape == (2, 3, 8, 8)

    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collator, num_workers=2)
    batches = list(loader)
    assert [batch["pixel_values"].shape for batch in batches] == [(3, 3, 8, 8)] * 2
    labels = torch.cat([batch["labels"] for batch in batches])
    assert torch.equal(labels.argmax(dim=1), torch.tensor([0, 1, 2, 0, 1, 2]))


def test_collator_with_transformers_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments

    class TinyClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, pixel_values, labels=None):
            logits = self.linear(pixel_values.mean(dim=(2, 3)))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
            return {"loss": loss, "logits": logits}

    images = [png_bytes(PIL.Image.new("RGB", (9, 7), (i * 60, 0, 0))) for i in range(4)]
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": data, "path": None} for data in images], "labels": [[0], [1], [0, 1], []]},
        features=multilabel_features(["x", "y"]),
    )
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        remove_unused_columns=False,
        report_to=[],
        use_cpu=True,
        max_steps=2,
        save_strategy="no",
        logging_strategy="no",
    )
    collator = MultiLabelCollator(2, transform=eval_transform(8))
    trainer = Trainer(model=TinyClassifier(), args=arguments, train_dataset=dataset, data_collator=collator)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["pixel_values"].shape == (2, 3, 8, 8) and batch["labels"].shape == (2, 2)
    assert trainer.train().global_step == 2


@pytest.mark.parametrize("decode", [True, False])
def test_training_path_decodes_each_image_once(tmp_path, monkeypatch, decode):
    """Dataset row (decoded by `datasets`, or a path the collator opens) -> collator -> training transform: one
    `PIL.Image.open`, one decode and one pass through `load_image` (EXIF, mode conversion) per image."""
    import sadcl_hf.data.images

    paths = []
    for index in range(4):
        paths.append(str(tmp_path / f"{index}.jpg"))
        PIL.Image.new("RGB", (40, 30), (index * 60, 20, 0)).save(paths[-1])
    dataset = datasets.Dataset.from_dict(
        {"image": paths, "labels": [[0]] * 4}, features=multilabel_features(["a", "b"])
    ).cast_column("image", datasets.Image(decode=decode))
    opened, decoded, converted = [], [], []
    real_open, real_load, real_to_rgb = PIL.Image.open, PIL.ImageFile.ImageFile.load, sadcl_hf.data.images._to_rgb

    def counting_open(*args, **kwargs):
        opened.append(args[0])
        return real_open(*args, **kwargs)

    def counting_load(image):
        if image.tile:  # still encoded
            decoded.append(image)
        return real_load(image)

    def counting_to_rgb(image, name):
        converted.append(name)
        return real_to_rgb(image, name)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", counting_load)
    monkeypatch.setattr(sadcl_hf.data.images, "_to_rgb", counting_to_rgb)
    collator = MultiLabelCollator(2, transform=build_train_transform(16, MEAN, STD, resize_margin=4, randaugment=True))
    batch = collator([dataset[index] for index in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 16, 16)
    assert len(opened) == len(decoded) == len(converted) == 4
