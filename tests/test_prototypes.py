"""Tests of sadcl_hf.training.prototypes: file I/O, the second-stage prototype pass and the online initializer."""

import logging
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sadcl_hf.training.prototypes import (
    OnlinePrototypeInitializer,
    compute_prototypes,
    load_prototypes,
    save_prototypes,
)

NUM_LABELS, DIM = 4, 3


@dataclass
class FakeOutput:
    logits: torch.Tensor
    label_features: torch.Tensor


class FakeModel(nn.Module):
    """Reads its outputs from the image: channel 0 row k holds label_features[:, k], channel 1 [k, 0] the logit."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.modes_seen = []

    def forward(self, pixel_values):
        self.modes_seen.append((self.training, torch.is_grad_enabled()))
        label_features = pixel_values[:, 0, :NUM_LABELS, :DIM] * self.scale
        logits = pixel_values[:, 1, :NUM_LABELS, 0] * self.scale
        return FakeOutput(logits=logits, label_features=label_features)


def make_batch(label_features, logits, labels):
    batch_size = label_features.shape[0]
    pixel_values = torch.zeros(batch_size, 3, NUM_LABELS, DIM)
    pixel_values[:, 0] = label_features
    pixel_values[:, 1, :, 0] = logits
    return {"pixel_values": pixel_values, "labels": labels.double()}


def make_dataset(seed=0):
    """Three batches; class 2 is present but never confident, class 3 never present."""
    generator = torch.Generator().manual_seed(seed)
    batches, records = [], []
    for batch_size in (3, 2, 4):
        label_features = torch.randn(batch_size, NUM_LABELS, DIM, generator=generator)
        labels = (torch.rand(batch_size, NUM_LABELS, generator=generator) < 0.6).float()
        labels[0, 0] = labels[0, 1] = labels[0, 2] = 1
        labels[:, 3] = 0
        logits = torch.randn(batch_size, NUM_LABELS, generator=generator) * 3
        logits[0, 0] = logits[0, 1] = 4.0  # sigmoid(4) = 0.982 > 0.85
        logits[:, 2] = 1.0  # sigmoid(1) = 0.73 < 0.85
        batches.append(make_batch(label_features, logits, labels))
        records.extend(zip(label_features, logits, labels))
    return batches, records


def hand_computed_mean(records, num_class, confident_only, threshold=0.85):
    selected = [
        features[num_class]
        for features, logits, labels in records
        if labels[num_class] == 1 and (not confident_only or torch.sigmoid(logits[num_class]) > threshold)
    ]
    return torch.stack(selected).mean(0), len(selected)


def test_compute_prototypes_matches_hand_computed_means(caplog):
    batches, records = make_dataset()
    model = FakeModel().train()
    fallback = torch.full((NUM_LABELS, DIM), 7.0)
    with caplog.at_level(logging.WARNING, logger="sadcl_hf.training.prototypes"):
        prototypes, counts = compute_prototypes(model, batches, threshold=0.85, fallback=fallback, progress_bar=False)
    assert prototypes.shape == (NUM_LABELS, DIM) and prototypes.dtype == torch.float32
    for num_class in (0, 1):
        expected, count = hand_computed_mean(records, num_class, confident_only=True)
        torch.testing.assert_close(prototypes[num_class], expected)
        assert counts[num_class] == count > 0
    expected_present, _ = hand_computed_mean(records, 2, confident_only=False)
    torch.testing.assert_close(prototypes[2], expected_present)  # fallback 1: any-confidence mean
    torch.testing.assert_close(prototypes[3], fallback[3])  # fallback 2: the given prototypes
    assert counts[2] == counts[3] == 0
    assert "[2, 3]" in caplog.text
    assert model.modes_seen == [(False, False)] * 3 and model.training  # eval + no_grad, mode restored


def test_compute_prototypes_without_fallback_uses_zeros_and_checks_the_model_output():
    batches, _ = make_dataset()
    prototypes, _ = compute_prototypes(FakeModel(), batches, progress_bar=False)
    assert torch.equal(prototypes[3], torch.zeros(DIM))

    class NoFeatures(nn.Module):
        def forward(self, pixel_values):
            return {"logits": pixel_values[:, 1, :NUM_LABELS, 0]}

    with pytest.raises(ValueError, match="label_features"):
        compute_prototypes(NoFeatures(), batches, progress_bar=False)
    with pytest.raises(KeyError, match="labels"):
        compute_prototypes(FakeModel(), [{"pixel_values": batches[0]["pixel_values"]}], progress_bar=False)


def test_online_initializer_accumulates_confident_running_means():
    batches, records = make_dataset(seed=1)
    model = FakeModel()
    initializer = OnlinePrototypeInitializer(NUM_LABELS, DIM, threshold=0.85)
    for batch in batches:
        outputs = model(pixel_values=batch["pixel_values"])
        initializer.update(outputs.label_features, outputs.logits, batch["labels"])
    fallback = torch.arange(NUM_LABELS * DIM, dtype=torch.float32).reshape(NUM_LABELS, DIM)
    prototypes = initializer.prototypes(fallback)
    for num_class in (0, 1):
        expected, count = hand_computed_mean(records, num_class, confident_only=True)
        torch.testing.assert_close(prototypes[num_class], expected)
        assert initializer.counts[num_class] == count
    torch.testing.assert_close(prototypes[2:], fallback[2:])  # never confidently seen: fallback kept
    offline, offline_counts = compute_prototypes(model, batches, progress_bar=False)
    torch.testing.assert_close(prototypes[:2], offline[:2])
    assert torch.equal(initializer.counts, offline_counts)
    with pytest.raises(ValueError, match="label_features"):
        initializer.update(torch.randn(2, NUM_LABELS, DIM + 1), torch.randn(2, NUM_LABELS), torch.ones(2, NUM_LABELS))


def test_online_initializer_state_round_trip():
    batches, _ = make_dataset(seed=2)
    model = FakeModel()
    first = OnlinePrototypeInitializer(NUM_LABELS, DIM)
    outputs = model(pixel_values=batches[0]["pixel_values"])
    first.update(outputs.label_features, outputs.logits, batches[0]["labels"])
    second = OnlinePrototypeInitializer(NUM_LABELS, DIM)
    second.load_state_dict({key: value.clone() for key, value in first.state_dict().items()})
    for initializer in (first, second):
        for batch in batches[1:]:
            outputs = model(pixel_values=batch["pixel_values"])
            initializer.update(outputs.label_features, outputs.logits, batch["labels"])
    fallback = torch.zeros(NUM_LABELS, DIM)
    torch.testing.assert_close(second.prototypes(fallback), first.prototypes(fallback))
    assert torch.equal(second.counts, first.counts)
    with pytest.raises(ValueError, match="does not fit"):
        second.load_state_dict({"means": torch.zeros(NUM_LABELS + 1, DIM), "counts": torch.zeros(NUM_LABELS + 1)})


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_save_and_load_round_trip(tmp_path, suffix):
    prototypes = torch.randn(NUM_LABELS, DIM)
    path = tmp_path / "sub" / f"prototypes{suffix}"
    save_prototypes(prototypes, path)
    assert torch.equal(load_prototypes(path, num_labels=NUM_LABELS, hidden_dim=DIM), prototypes)


def test_load_accepts_released_layouts(tmp_path):
    released = np.random.default_rng(0).standard_normal((1, NUM_LABELS, DIM)).astype(np.float32)  # [1, K, D]
    np.save(tmp_path / "coco_085.npy", released)
    torch.testing.assert_close(load_prototypes(tmp_path / "coco_085.npy"), torch.from_numpy(released[0]))
    single = torch.randn(NUM_LABELS, DIM)
    save_file({"anything": single}, str(tmp_path / "single.safetensors"))
    assert torch.equal(load_prototypes(tmp_path / "single.safetensors"), single)
    save_file({"prototypes": single, "other": torch.zeros(1)}, str(tmp_path / "named.safetensors"))
    assert torch.equal(load_prototypes(tmp_path / "named.safetensors"), single)


def test_load_rejects_bad_files_with_clear_errors(tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((NUM_LABELS, DIM + 1), dtype=np.float32))
    with pytest.raises(ValueError, match=r"wrong\.npy.*\[4, 3\]"):
        load_prototypes(tmp_path / "wrong.npy", num_labels=NUM_LABELS, hidden_dim=DIM)
    save_file({"a": torch.zeros(2, 2), "b": torch.zeros(2, 2)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ValueError, match=r"two\.safetensors.*'prototypes'"):
        load_prototypes(tmp_path / "two.safetensors")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_prototypes(tmp_path / "objects.npy")
    (tmp_path / "prototypes.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.npy or \.safetensors"):
        load_prototypes(tmp_path / "prototypes.pt")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_prototypes(tmp_path / "missing.npy")


def test_dataset_prototypes_use_the_evaluation_batches_and_the_models_threshold():
    """`compute_dataset_prototypes` = `compute_prototypes` over the model's evaluation collator, with the config's
    threshold and the model's current prototypes as the fallback of classes never present."""
    import datasets
    import PIL.Image

    from sadcl_hf.data import multilabel_features
    from sadcl_hf.image_processing import eval_collator_for_config
    from sadcl_hf.training.prototypes import compute_dataset_prototypes

    from .conftest import make_tiny_model

    model = make_tiny_model(num_labels=3, seed=4, prototype_threshold=0.3)
    with torch.no_grad():
        model.prototypes.normal_()
    rng = np.random.default_rng(0)
    dataset = datasets.Dataset.from_dict(
        {
            "image": [PIL.Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(6)],
            "labels": [[0], [0, 1], [1], [0], [], [1]],
        },
        features=multilabel_features(["a", "b", "c"]),
    )
    prototypes, counts = compute_dataset_prototypes(model, dataset, batch_size=4, progress_bar=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=eval_collator_for_config(model.config))
    expected, expected_counts = compute_prototypes(
        model, loader, threshold=0.3, fallback=model.prototypes.detach(), progress_bar=False
    )
    torch.testing.assert_close(prototypes, expected)
    assert torch.equal(counts, expected_counts)
    torch.testing.assert_close(prototypes[2], model.prototypes[2].detach())  # class "c" never present
    _, strict_counts = compute_dataset_prototypes(model, dataset, threshold=0.999, progress_bar=False)
    assert strict_counts.sum() < counts.sum()
