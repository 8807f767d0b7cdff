"""Training / evaluation transforms (TSN multi-scale crop) and the multi-label collator."""

import io
import logging
import pickle

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from sadcl_hf.data import (
    DEFAULT_CROP_SCALES,
    ImageLoadError,
    MultiLabelCollator,
    MultiScaleCrop,
    build_eval_transform,
    build_train_transform,
    multilabel_features,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
    gray = PIL.Image.new("L", (70, 50), 128)
    torch.manual_seed(0)
    train = build_train_transform(32, MEAN, STD, resize_margin=8)
    out = train(gray)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected, atol=1e-4, rtol=0)

    evaluation = build_eval_transform(24, MEAN, STD)
    rgba = PIL.Image.new("RGBA", (30, 10), (255, 0, 0, 0))  # fully transparent -> white
    torch.testing.assert_close(evaluation(rgba)[:, 5, 5], (1 - torch.tensor(MEAN)) / torch.tensor(STD))
    assert evaluation(rgba).shape == (3, 24, 24)

    torch.manual_seed(1)
    augmented = build_train_transform(32, MEAN, STD, randaugment=True, cutout=True)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    first = augmented(image)
    torch.manual_seed(1)
    assert torch.equal(first, augmented(image))  # reproducible from the torch seed
    assert first.shape == (3, 32, 32)


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
    collator = MultiLabelCollator(4, transform=build_eval_transform(16, MEAN, STD))
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
        batch = MultiLabelCollator(3, skip_unreadable=True)(examples)
    assert "Skipped 1 unreadable image(s) out of 3" in caplog.text
    assert torch.equal(batch["labels"], torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))  # labels stay with their images
    with pytest.raises(ImageLoadError, match="every image in the batch"):
        MultiLabelCollator(3, skip_unreadable=True)([examples[1]])


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
        output_dir=str(tmp_path), per_device_train_batch_size=2, remove_unused_columns=False, report_to=[],
        use_cpu=True, max_steps=2, save_strategy="no", logging_strategy="no",
    )
    collator = MultiLabelCollator(2, transform=build_eval_transform(8, MEAN, STD))
    trainer = Trainer(model=TinyClassifier(), args=arguments, train_dataset=dataset, data_collator=collator)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["pixel_values"].shape == (2, 3, 8, 8) and batch["labels"].shape == (2, 2)
    assert trainer.train().global_step == 2
