"""Tests of sadcl_hf.losses: parity with the official SADCL losses (reference vectors), the corrected SSCL against an
independent dense computation, edge cases, mixed precision and the cost of the contrastive losses."""

import functools
import math
import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sadcl_hf.losses import (
    LOSS_COMPONENTS,
    AsymmetricLoss,
    PrototypeToSampleContrastiveLoss,
    SADCLLoss,
    SADCLLossOutput,
    SampleToSampleContrastiveLoss,
    confident_positives,
)

from .conftest import FIXTURES_DIR, SHARED_REFERENCE_DIR
from .released_losses import dense_released_sscl

# p01-p07 are copied into the repository (tests/fixtures/losses); p08 (24 MB) is read from ../shared/reference.
SMALL_VECTOR_FILES = [
    "p01_random_bs4_nc20_d64",
    "p02_edges_bs6_nc8_d32",
    "p03_all_zero_labels_bs4_nc5_d16",
    "p04_bs1_antipodal_bs1_nc3_d8",
    "p05_all_ones_bs3_nc4_d16",
    "p06_memorybank_init_bs8_nc20_d64",
    "p07_fp16_bs4_nc20_d64",
]
PAPER_SCALE_VECTOR_FILE = "p08_paper_scale_bs32_nc80_d1024"
LOSS_FIXTURES_DIR = FIXTURES_DIR / "losses"
SHARED_LOSSES_DIR = SHARED_REFERENCE_DIR / "losses"


def vector_files(exclude: tuple[str, ...] = ()) -> list:
    """Parameters over every vector file; the paper-scale one is marked `requires_shared_reference`."""
    small = [name for name in SMALL_VECTOR_FILES if not name.startswith(exclude)]
    return small + [pytest.param(PAPER_SCALE_VECTOR_FILE, marks=pytest.mark.requires_shared_reference)]


ASL_CONFIGS = {
    "paper": dict(gamma_neg=0, gamma_pos=0, clip=0.0, eps=1e-5),
    "cocosh": dict(gamma_neg=4, gamma_pos=0, clip=0.0, eps=1e-5),
    "default": dict(gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-5, focal_weight_grad=True),
}


@functools.cache
def load_vectors(name):
    directory = LOSS_FIXTURES_DIR if name in SMALL_VECTOR_FILES else SHARED_LOSSES_DIR
    path = directory / f"{name}.safetensors"
    assert path.is_file(), f"reference vectors not found: {path}"
    return load_file(str(path))


def reference_prefix(vectors, precision):
    """Key prefix of the official outputs to compare with: f64_*, or f32_* / unprefixed for float32."""
    if precision == "f64":
        return "f64_"
    return "f32_" if "f32_sscl_loss" in vectors else ""


def assert_value_close(value, reference, precision, extra_atol=0.0):
    value, reference = float(value.detach()), float(reference)
    tolerance = (1e-9 * abs(reference) + 1e-12) if precision == "f64" else (1e-4 * abs(reference) + 1e-6 + extra_atol)
    assert abs(value - reference) <= tolerance, (value, reference)


def assert_grad_close(grad, reference, precision, asl=False):
    reference = reference.to(grad.dtype)
    max_ref = reference.abs().max().item()
    if precision == "f64":
        tolerance = 1e-8 * max_ref + 1e-13
    else:
        tolerance = (1e-4 * max_ref + 1e-4) if asl else (5e-4 * max_ref + 1e-9)
    error = (grad - reference).abs().max().item()
    assert error <= tolerance, (error, tolerance)


def leaf(tensor, dtype):
    return tensor.to(dtype).clone().requires_grad_()


# ---------------------------------------------------------------------------------------------------------------------
# Parity with the official implementation
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["f64", "f32"])
@pytest.mark.parametrize("name", vector_files())
def test_sscl_reference_mode_matches_official(name, precision):
    vectors = load_vectors(name)
    prefix = reference_prefix(vectors, precision)
    dtype = torch.float64 if precision == "f64" else torch.float32
    features = leaf(vectors["features"], dtype)
    loss = SampleToSampleContrastiveLoss(mode="reference")(features, vectors["labels"])
    loss.backward()
    assert_value_close(loss, vectors[prefix + "sscl_loss"], precision)
    if prefix + "sscl_grad_features" in vectors:
        assert_grad_close(features.grad, vectors[prefix + "sscl_grad_features"], precision)
    else:  # p08: the gradient is stored on the positive rows only, every other row is exactly 0
        pos_index = vectors["pos_index"]
        grad_on_positives = features.grad[pos_index[:, 0], :, pos_index[:, 1]].transpose(0, 1)
        assert_grad_close(grad_on_positives, vectors[prefix + "sscl_grad_features_pos"], precision)
        other_rows = torch.ones(features.shape[0], features.shape[2], dtype=torch.bool)
        other_rows[pos_index[:, 0], pos_index[:, 1]] = False
        assert features.grad.transpose(1, 2)[other_rows].abs().max() == 0


@pytest.mark.parametrize("precision", ["f64", "f32"])
@pytest.mark.parametrize("name", vector_files(exclude=("p03",)))
def test_pscl_matches_official(name, precision):
    vectors = load_vectors(name)
    prefix = reference_prefix(vectors, precision)
    dtype = torch.float64 if precision == "f64" else torch.float32
    embeddings = leaf(vectors["features"][:, 0], dtype)
    prototypes = leaf(vectors["prototype"], dtype)  # [1, K, D], as in the release
    loss = PrototypeToSampleContrastiveLoss()(embeddings, prototypes, vectors["labels"])
    loss.backward()
    assert_value_close(loss, vectors[prefix + "pscl_loss"], precision)
    if prefix + "pscl_grad_semantic" in vectors:
        assert_grad_close(embeddings.grad, vectors[prefix + "pscl_grad_semantic"], precision)
        assert_grad_close(prototypes.grad, vectors[prefix + "pscl_grad_prototype"], precision)


@pytest.mark.parametrize("precision", ["f64", "f32"])
@pytest.mark.parametrize("config", sorted(ASL_CONFIGS))
@pytest.mark.parametrize("name", vector_files())
def test_asl_matches_official(name, config, precision):
    vectors = load_vectors(name)
    prefix = reference_prefix(vectors, precision)
    dtype = torch.float64 if precision == "f64" else torch.float32
    logits = leaf(vectors["logits"], dtype)
    loss = AsymmetricLoss(**ASL_CONFIGS[config])(logits, vectors["labels"])
    loss.backward()
    assert_value_close(loss, vectors[f"{prefix}asl_{config}_loss"], precision, extra_atol=1e-4)
    assert_grad_close(logits.grad, vectors[f"{prefix}asl_{config}_grad_logits"], precision, asl=True)


@pytest.mark.requires_shared_reference
def test_fixture_copies_are_identical_to_the_shared_reference():
    for name in SMALL_VECTOR_FILES:
        copy = (LOSS_FIXTURES_DIR / f"{name}.safetensors").read_bytes()
        assert copy == (SHARED_LOSSES_DIR / f"{name}.safetensors").read_bytes(), name


def test_asl_focal_weight_without_gradient_by_default():
    vectors = load_vectors("p01_random_bs4_nc20_d64")
    grads = {}
    for focal_weight_grad in (False, True):
        logits = leaf(vectors["logits"], torch.float64)
        AsymmetricLoss(4, 1, 0.05, 1e-5, focal_weight_grad=focal_weight_grad)(logits, vectors["labels"]).backward()
        grads[focal_weight_grad] = logits.grad
    assert_grad_close(grads[True], vectors["f64_asl_default_grad_logits"], "f64")
    assert (grads[False] - vectors["f64_asl_default_grad_logits"]).abs().max() > 1e-3


def test_half_precision_inputs_compute_in_float32():
    """p07: fp16 inputs give the float32 results (the official fp16 run overflows in the ASL gradient)."""
    vectors = load_vectors("p07_fp16_bs4_nc20_d64")
    features = vectors["features"].clone().requires_grad_()
    sscl = SampleToSampleContrastiveLoss()(features, vectors["labels"])
    sscl.backward()
    assert sscl.dtype == torch.float32 and features.grad.dtype == torch.float16
    assert_value_close(sscl, vectors["f32_sscl_loss"], "f32")
    assert_grad_close(features.grad.float(), vectors["f32_sscl_grad_features"], "f32")

    embeddings = vectors["features"][:, 0].clone().requires_grad_()
    pscl = PrototypeToSampleContrastiveLoss()(embeddings, vectors["prototype"], vectors["labels"])
    pscl.backward()
    assert_value_close(pscl, vectors["f32_pscl_loss"], "f32")

    assert not torch.isfinite(vectors["asl_default_grad_logits"].float()).all()  # the official fp16 overflow
    for config, kwargs in ASL_CONFIGS.items():
        logits = vectors["logits"].clone().requires_grad_()
        asl = AsymmetricLoss(**kwargs)(logits, vectors["labels"])
        asl.backward()
        assert asl.dtype == torch.float32 and torch.isfinite(logits.grad).all()
        assert_value_close(asl, vectors[f"f32_asl_{config}_loss"], "f32", extra_atol=1e-4)


def test_contrastive_losses_normalise_features_internally():
    """The official losses L2-normalise internally (vectors match with unnormalised inputs): scale is irrelevant."""
    vectors = load_vectors("p01_random_bs4_nc20_d64")
    features = vectors["features"].double()
    assert not torch.allclose(features.norm(dim=-1), torch.ones(1, dtype=torch.float64))
    scale = torch.rand(features.shape[:-1], dtype=torch.float64)[..., None] * 10 + 0.1
    labels = vectors["labels"]
    for mode in ("reference", "corrected"):
        sscl = SampleToSampleContrastiveLoss(mode=mode)
        torch.testing.assert_close(sscl(features * scale, labels), sscl(features, labels), rtol=1e-12, atol=1e-12)
    pscl = PrototypeToSampleContrastiveLoss()
    prototypes = vectors["prototype"].double()
    torch.testing.assert_close(
        pscl(features[:, 0] * scale[:, 0], prototypes * 3.0, labels), pscl(features[:, 0], prototypes, labels)
    )


# ---------------------------------------------------------------------------------------------------------------------
# Independent dense computations
# ---------------------------------------------------------------------------------------------------------------------


def paper_equation_sscl(features, labels, temperature=0.2, base_temperature=0.2):
    """The paper's SSCL equation with explicit loops: every positive (view, sample, class) feature is an anchor."""
    batch_size, num_views, num_labels, _ = features.shape
    z = F.normalize(features, dim=-1)
    rows = [
        (v, b, c) for v in range(num_views) for b in range(batch_size) for c in range(num_labels) if labels[b, c] > 0.5
    ]
    anchor_losses = []
    for anchor in rows:
        others = [row for row in rows if row != anchor]
        positives = [row for row in others if row[2] == anchor[2]]
        if not positives:
            continue
        logits = torch.stack([z[anchor[1], anchor[0], anchor[2]] @ z[b, v, c] / temperature for v, b, c in others])
        log_norm = torch.logsumexp(logits, dim=0)
        log_probs = [z[anchor[1], anchor[0], anchor[2]] @ z[b, v, c] / temperature - log_norm for v, b, c in positives]
        anchor_losses.append(-(temperature / base_temperature) * torch.stack(log_probs).mean())
    if not anchor_losses:
        return features.sum() * 0
    return torch.stack(anchor_losses).mean()


def random_case(batch_size, num_views, num_labels, dim, density, seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch_size, num_views, num_labels, dim, generator=generator, dtype=torch.float64)
    labels = (torch.rand(batch_size, num_labels, generator=generator) < density).float()
    return features, labels


CASES = {
    "two_views": (5, 2, 6, 8, 0.4),
    "one_view": (4, 1, 5, 8, 0.5),
    "three_views": (3, 3, 4, 6, 0.5),
    "batch_of_one": (1, 2, 5, 4, 0.6),
    "all_ones": (3, 2, 3, 4, 1.1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sscl_corrected_mode_is_the_paper_equation(case):
    features, labels = random_case(*CASES[case], seed=1)
    if case == "two_views":
        labels[0] = 0  # a sample without labels
        labels[:, 1] = 0  # a class absent from the batch
        labels[2, 2], labels[[0, 1, 3, 4], 2] = 1, 0  # a class with a single positive
    candidate_input = features.clone().requires_grad_()
    expected_input = features.clone().requires_grad_()
    candidate = SampleToSampleContrastiveLoss(mode="corrected")(candidate_input, labels)
    expected = paper_equation_sscl(expected_input, labels)
    candidate.backward()
    expected.backward()
    torch.testing.assert_close(candidate, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(candidate_input.grad, expected_input.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_sscl_reference_mode_matches_dense_released_algorithm(case):
    features, labels = random_case(*CASES[case], seed=2)
    candidate_input = features.clone().requires_grad_()
    expected_input = features.clone().requires_grad_()
    candidate = SampleToSampleContrastiveLoss(mode="reference")(candidate_input, labels)
    expected = dense_released_sscl(expected_input, labels)
    candidate.backward()
    expected.backward()
    torch.testing.assert_close(candidate, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(candidate_input.grad, expected_input.grad, rtol=1e-10, atol=1e-13)


def test_sscl_modes_agree_in_gradient_where_the_defect_vanishes():
    """All labels 1: every anchor counts in the release too; the gradients differ only by the 1e-5 eps."""
    features, labels = random_case(*CASES["all_ones"], seed=3)
    grads = {}
    for mode in ("reference", "corrected"):
        leaf_features = features.clone().requires_grad_()
        SampleToSampleContrastiveLoss(mode=mode)(leaf_features, labels).backward()
        grads[mode] = leaf_features.grad
    torch.testing.assert_close(grads["reference"], grads["corrected"], rtol=1e-4, atol=1e-6)


def test_sscl_reference_mode_drops_anchors_like_the_release():
    """With several views and samples the released mask drops anchors: the two modes then differ."""
    features, labels = random_case(*CASES["two_views"], seed=4)
    reference = SampleToSampleContrastiveLoss(mode="reference")(features, labels)
    corrected = SampleToSampleContrastiveLoss(mode="corrected")(features, labels)
    assert abs(reference.item() - corrected.item()) > 1e-3


def test_sscl_forward_views_equals_forward():
    features, labels = random_case(4, 2, 6, 8, 0.4, seed=5)
    for mode in ("reference", "corrected"):
        sscl = SampleToSampleContrastiveLoss(mode=mode)
        views = [features[:, 0].clone().requires_grad_(), features[:, 1].clone().requires_grad_()]
        stacked = features.clone().requires_grad_()
        from_views = sscl.forward_views(views, labels)
        from_stack = sscl(stacked, labels)
        from_views.backward()
        from_stack.backward()
        torch.testing.assert_close(from_views, from_stack, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(torch.stack([view.grad for view in views], dim=1), stacked.grad)


def test_pscl_is_the_released_per_class_formula():
    features, labels = random_case(5, 1, 4, 6, 0.4, seed=6)
    labels[:, 0] = 0  # absent class
    embeddings = features[:, 0]
    prototypes = torch.randn(4, 6, dtype=torch.float64)
    similarity = F.cosine_similarity(embeddings, prototypes[None], dim=-1).T / 0.07  # [K, B]
    terms = []
    for k in range(4):
        positives = labels[:, k] > 0.5
        if positives.any():
            terms.append(torch.logsumexp(similarity[k], 0) - torch.logsumexp(similarity[k][positives], 0))
        else:
            terms.append(torch.logsumexp(similarity[k], 0) - similarity[k].max())
    expected = torch.stack(terms).sum() / labels.sum()
    torch.testing.assert_close(PrototypeToSampleContrastiveLoss()(embeddings, prototypes, labels), expected)


# ---------------------------------------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------------------------------------


def all_losses(features, prototypes, labels):
    return {
        "sscl_reference": SampleToSampleContrastiveLoss(mode="reference")(features, labels),
        "sscl_corrected": SampleToSampleContrastiveLoss(mode="corrected")(features, labels),
        "pscl": PrototypeToSampleContrastiveLoss()(features[:, 0], prototypes, labels),
    }


@pytest.mark.parametrize("labels_kind", ["all_zero", "all_ones", "batch_of_one", "absent_class_and_empty_sample"])
def test_edge_cases_give_finite_losses_and_gradients(labels_kind):
    batch_size = 1 if labels_kind == "batch_of_one" else 4
    features = torch.randn(batch_size, 2, 5, 8)
    prototypes = torch.randn(5, 8)
    labels = {
        "all_zero": torch.zeros(batch_size, 5),
        "all_ones": torch.ones(batch_size, 5),
        "batch_of_one": torch.tensor([[1.0, 0, 1, 0, 0]]),
        "absent_class_and_empty_sample": torch.tensor(
            [[0.0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 0, 0, 1], [0, 0, 1, 1, 0]]
        ),
    }[labels_kind]
    for name, _loss_fn in all_losses(features, prototypes, labels).items():
        leaf_features = features.clone().requires_grad_()
        leaf_prototypes = prototypes.clone().requires_grad_()
        loss = all_losses(leaf_features, leaf_prototypes, labels)[name]
        loss.backward()
        assert loss.dim() == 0 and torch.isfinite(loss), name
        assert torch.isfinite(leaf_features.grad).all(), name
        if name == "pscl":
            assert torch.isfinite(leaf_prototypes.grad).all()
        if labels_kind == "all_zero" and name.startswith("sscl"):
            assert loss.item() == 0 and leaf_features.grad.abs().max() == 0
        if labels_kind == "all_ones" and name == "pscl":
            assert abs(loss.item()) < 1e-6  # every sample positive: numerator = denominator
    asl_logits = torch.randn(batch_size, 5, requires_grad=True)
    asl = AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0.05)(asl_logits, labels)
    asl.backward()
    assert torch.isfinite(asl) and torch.isfinite(asl_logits.grad).all()


def test_pscl_all_zero_labels_is_the_mean_of_absent_class_terms():
    embeddings = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    prototypes = torch.randn(4, 6, dtype=torch.float64)
    loss = PrototypeToSampleContrastiveLoss()(embeddings, prototypes, torch.zeros(3, 4))
    similarity = F.cosine_similarity(embeddings.detach(), prototypes[None], dim=-1).T / 0.07
    expected = (torch.logsumexp(similarity, 1) - similarity.amax(1)).mean()
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert torch.isfinite(embeddings.grad).all() and embeddings.grad.abs().max() > 0


def test_asl_is_scaled_clamped_binary_cross_entropy_and_stable():
    logits = torch.tensor([[-100.0, -8.0, 0.0, 3.0, 60.0]] * 2, requires_grad=True)
    labels = torch.tensor([[1.0, 1, 0, 1, 0], [0, 0, 1, 0, 1]])
    loss = AsymmetricLoss()(logits, labels)
    probabilities = torch.sigmoid(logits.detach().double())
    expected = (
        -1000
        * (
            labels * torch.log(probabilities.clamp(min=1e-5))
            + (1 - labels) * torch.log((1 - probabilities).clamp(min=1e-5))
        ).mean()
    )
    assert abs(loss.item() - expected.item()) <= 1e-5 * expected.item()
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 0] == 0 and logits.grad[0, 4] == 0  # clamped at eps: no gradient, as in the release


# ---------------------------------------------------------------------------------------------------------------------
# Mixed precision
# ---------------------------------------------------------------------------------------------------------------------


def test_losses_compute_in_float32_under_bfloat16_autocast():
    generator = torch.Generator().manual_seed(7)
    label_features = torch.randn(6, 10, 16, generator=generator)
    memory_bank = torch.randn(6, 10, 16, generator=generator)
    prototypes = torch.randn(10, 16, generator=generator)
    logits = torch.randn(6, 10, generator=generator) * 8
    labels = (torch.rand(6, 10, generator=generator) < 0.3).double()  # the real loader yields float64 labels
    objective = SADCLLoss(
        {
            "asl": AsymmetricLoss(gamma_neg=4, clip=0.05),
            "sscl": SampleToSampleContrastiveLoss(),
            "pscl": PrototypeToSampleContrastiveLoss(),
        }
    )
    expected = objective(logits, labels, label_features, memory_bank, prototypes)
    inputs = [tensor.clone().requires_grad_() for tensor in (logits, label_features, memory_bank, prototypes)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        projected = inputs[1] @ torch.eye(16)  # bf16 under autocast, like a projection head's output
        assert projected.dtype == torch.bfloat16
        output = objective(inputs[0], labels, projected, inputs[2], inputs[3])
    for name, value in {"loss": output.loss, **output.terms}.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    torch.testing.assert_close(output.terms["asl"], expected.terms["asl"])
    # bf16-rounded features
    torch.testing.assert_close(output.terms["pscl"], expected.terms["pscl"], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(output.terms["sscl"], expected.terms["sscl"], rtol=2e-2, atol=2e-2)
    output.loss.backward()
    assert all(torch.isfinite(tensor.grad).all() for tensor in inputs)


# ---------------------------------------------------------------------------------------------------------------------
# Cost and the combined objective
# ---------------------------------------------------------------------------------------------------------------------


def test_sscl_cost_grows_with_positive_labels_not_batch_times_classes():
    """B*V*K = 64000 features (a dense similarity matrix would need 16 GB); only the 50 positives are used."""
    batch_size, num_labels, dim = 100, 320, 16
    features = torch.randn(batch_size, 2, num_labels, dim, requires_grad=True)
    labels = torch.zeros(batch_size, num_labels)
    labels[torch.arange(50), torch.randint(0, num_labels, (50,))] = 1
    start = time.perf_counter()
    for mode in ("reference", "corrected"):
        SampleToSampleContrastiveLoss(mode=mode)(features, labels).backward()
    assert time.perf_counter() - start < 10
    assert torch.isfinite(features.grad).all()


def test_sadcl_loss_combines_the_three_terms():
    generator = torch.Generator().manual_seed(8)
    logits = torch.randn(4, 6, generator=generator)
    labels = (torch.rand(4, 6, generator=generator) < 0.5).float()
    label_features, memory_bank = torch.randn(2, 4, 6, 8, generator=generator)
    prototypes = torch.randn(6, 8, generator=generator)
    config = SimpleNamespace(
        asl_gamma_neg=4,
        asl_gamma_pos=0,
        asl_clip=0.05,
        asl_eps=1e-5,
        sscl_temperature=0.3,
        sscl_base_temperature=0.3,
        sscl_mode="corrected",
        pscl_temperature=0.1,
        sscl_weight=10.0,
        pscl_weight=5.0,
    )
    objective = SADCLLoss.from_config(config)
    terms = objective.terms
    assert terms["sscl"].mode == "corrected" and terms["asl"].gamma_neg == 4 and terms["pscl"].temperature == 0.1
    output = objective(logits, labels, label_features, memory_bank, prototypes)
    assert isinstance(output, SADCLLossOutput)
    asl = AsymmetricLoss(4, 0, 0.05, 1e-5)(logits, labels)
    sscl = SampleToSampleContrastiveLoss(0.3, 0.3, "corrected")(torch.stack([label_features, memory_bank], 1), labels)
    pscl = PrototypeToSampleContrastiveLoss(0.1)(label_features, prototypes, labels)
    assert list(output.terms) == list(LOSS_COMPONENTS)
    torch.testing.assert_close(output.terms["asl"], asl)
    torch.testing.assert_close(output.terms["sscl"], sscl)
    torch.testing.assert_close(output.terms["pscl"], pscl)
    torch.testing.assert_close(output.loss, asl + 10.0 * sscl + 5.0 * pscl)

    paper = SADCLLoss.from_config(SimpleNamespace())
    assert paper.weights == {"asl": 1.0, "sscl": 100.0, "pscl": 50.0} and paper.terms["sscl"].mode == "reference"
    asl_only = paper(logits, labels)
    assert list(asl_only.terms) == ["asl"] and asl_only.loss is asl_only.terms["asl"]
    with pytest.raises(ValueError, match="must be given together"):
        paper(logits, labels, label_features, None, prototypes)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="mode"):
        SampleToSampleContrastiveLoss(mode="dense")
    with pytest.raises(ValueError, match=r"features.*\[batch_size, num_views, num_labels, dim\]"):
        SampleToSampleContrastiveLoss()(torch.randn(2, 3, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="labels"):
        SampleToSampleContrastiveLoss()(torch.randn(2, 2, 3, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match="prototypes"):
        PrototypeToSampleContrastiveLoss()(torch.randn(2, 3, 4), torch.randn(3, 5), torch.ones(2, 3))
    with pytest.raises(ValueError, match="logits"):
        AsymmetricLoss()(torch.randn(2, 3, 1), torch.ones(2, 3))
    assert math.isclose(AsymmetricLoss()(torch.zeros(1, 1), torch.ones(1, 1)).item(), 1000 * math.log(2), rel_tol=1e-6)


def test_confident_positives_need_the_label_and_a_probability_above_the_threshold():
    logits = torch.tensor([[0.0, 2.0, 2.0, -3.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    mask = confident_positives(logits, labels, threshold=0.5)
    assert mask.tolist() == [[False, True, False, False]]  # sigmoid(0) = 0.5 is not above 0.5
    assert confident_positives(logits, labels, threshold=0.0).tolist() == [[True, True, False, True]]


def test_a_new_loss_term_is_one_class_and_one_registry_entry(monkeypatch):
    """A term registered in LOSS_TERMS is built from its `{name}_*` config fields, weighted by `{name}_weight`,
    returned in the loss output and the model output's `loss_terms`, and logged by the trainer under its name."""
    from sadcl_hf import SADCLConfig, SADCLForImageClassification
    from sadcl_hf.losses import LOSS_TERMS, LossTerm

    class LogitNormPenalty(LossTerm):
        name = "logit_norm"
        inputs = ("logits",)

        def __init__(self, power: float = 2.0):
            super().__init__()
            self.power = power

        def loss_from_inputs(self, inputs):
            return inputs["logits"].float().abs().pow(self.power).mean()

    monkeypatch.setitem(LOSS_TERMS, "logit_norm", LogitNormPenalty)
    config = SADCLConfig.from_preset("tiny", num_labels=3, use_pretrained_backbone=False)
    config.logit_norm_power = 1.0
    config.logit_norm_weight = 0.5
    model = SADCLForImageClassification(config).train()
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    output = model(torch.randn(2, 3, 64, 64), labels=labels)
    assert list(output.loss_terms) == ["asl", "sscl", "pscl", "logit_norm"]
    assert model.criterion.terms["logit_norm"].power == 1.0
    torch.testing.assert_close(output.loss_terms["logit_norm"], output.logits.abs().mean())
    expected = sum(model.criterion.weights[name] * value for name, value in output.loss_terms.items())
    assert model.criterion.weights["logit_norm"] == 0.5
    torch.testing.assert_close(output.loss, expected)


def test_loss_components_name_the_loss_output_and_the_model_output_fields():
    from sadcl_hf import SADCLConfig, SADCLForImageClassification

    assert LOSS_COMPONENTS == ("asl", "sscl", "pscl")
    config = SADCLConfig.from_preset("tiny", num_labels=3, use_pretrained_backbone=False)
    assert "loss_terms" in config.keys_to_ignore_at_inference
    model = SADCLForImageClassification(config).train()
    output = model(torch.randn(2, 3, 64, 64), labels=torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    assert list(output.loss_terms) == list(LOSS_COMPONENTS)
