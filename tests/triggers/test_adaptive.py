"""Adaptive masks: budget after rounding, the batched update, honest fooling rates, seeds (the
DeepFool step itself: test_deepfool.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from perturbd.config import TriggerConfig
from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.errors import ConfigError
from perturbd.metrics import target_rate
from perturbd.triggers import Trigger, TriggerContext, build_trigger
from perturbd.triggers.adaptive import (
    check_budget,
    pick_samples,
    quantize,
    universal_perturbation,
)
from perturbd.triggers.deepfool import deepfool_one

CLASSES = tuple(str(i) for i in range(10))


# --------------------------------------------------------------------------- budget after rounding


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_budget_holds_after_rounding_for_random_masks(norm: str) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 6, 6), generator=gen, dtype=torch.uint8)  # many pixels at 0/255: clipping
    for trial in range(300):
        budget = float(torch.empty(1).uniform_(1.0, 40.0, generator=gen)) if trial % 3 else float(1 + trial % 17)
        scale = float(torch.empty(1).uniform_(0.05, 30.0, generator=gen))
        delta = torch.randn(3, 6, 6, generator=gen) * scale
        if trial % 5 == 0:  # adversarial case for rounding: every entry a hair above .5
            delta = torch.full((3, 6, 6), 0.5001) * torch.sign(torch.randn(3, 6, 6, generator=gen))
        q = quantize(delta, norm, budget)
        assert torch.equal(q, torch.round(q)), "the mask is integer-valued: uint8 rounding cannot move it"
        size = float(q.abs().max()) if norm == "linf" else float(q.norm())
        assert size <= budget + 1e-9, (trial, size, budget)
        diff = Trigger(q, "adaptive").apply(images).double() - images.double()
        per_image = diff.flatten(1).abs().amax(1) if norm == "linf" else diff.flatten(1).norm(dim=1)
        assert float(per_image.max()) <= budget + 1e-9, "budget holds on the shipped uint8 images"


def test_quantize_keeps_a_mask_already_inside() -> None:
    delta = torch.tensor([[[3.2, -4.7], [0.4, 9.6]]])
    assert torch.equal(quantize(delta, "linf", 10.0), torch.tensor([[[3.0, -5.0], [0.0, 10.0]]]))
    assert torch.equal(quantize(delta, "linf", 9.9), torch.tensor([[[3.0, -5.0], [0.0, 9.0]]]))  # floor(ξ)
    assert float(quantize(delta, "l2", 5.0).norm()) <= 5.0


@pytest.mark.parametrize("norm,budget", [("linf", 0.9), ("l2", 0.5)])
def test_budget_below_one_grey_level_is_a_config_error(norm: str, budget: float) -> None:
    with pytest.raises(ConfigError, match="below one grey level"):
        check_budget(norm, budget)


# --------------------------------------------------------------------------- the paper's loop and the batched variant


def reference_universal_pass(model: nn.Module, x: torch.Tensor, target: int, order: list[int], xi: float, max_iter: int) -> torch.Tensor:
    """One pass of LTS4's ``universal_perturbation`` with a targeted DeepFool, transcribed plainly
    (pixel units): DeepFool at the *unclipped* ``x + v``, its ``dr`` added only when
    ``iter < max_iter - 1``, then the L∞ projection. Written apart from perturbd's kernels."""
    v = torch.zeros(x.shape[1:])
    for k in order:
        image = x[k : k + 1] + v / 255
        if int(model(image).argmax()) == target:
            continue
        r_tot, loop_i = torch.zeros_like(image), 0
        pert_image = image
        while int(model(pert_image).argmax()) != target and loop_i < max_iter:
            p = pert_image.detach().requires_grad_(True)
            out = model(p)[0]
            top = int(out.argmax())
            (w,) = torch.autograd.grad(out[target] - out[top], p)
            r_tot = r_tot + abs(float(out[target].detach() - out[top].detach())) / float(w.pow(2).sum()) * w
            pert_image = image + 1.02 * r_tot
            loop_i += 1
        if loop_i < max_iter - 1:
            v = (v + 1.02 * 255 * r_tot[0]).clamp(-xi, xi)
    return v


@pytest.mark.parametrize("max_steps", [3, 10])
def test_deepfool_is_the_reference_loop_one_sample_at_a_time(small_cnn, max_steps: int) -> None:
    # Liao et al. on LTS4's loop: for each sample that x + δ does not send to t, its DeepFool
    # perturbation (at the unclipped x + δ) is added to δ if DeepFool converged, and δ projected,
    # before the next sample; batch_size does not change that.
    model = small_cnn(2).eval()
    images = torch.randint(0, 256, (12, 1, 28, 28), generator=torch.Generator().manual_seed(6), dtype=torch.uint8)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(4)).tolist()
    expected = quantize(reference_universal_pass(model, to_float01(images), 5, order, 20, max_steps), "linf", 20)
    got, facts = universal_perturbation(
        model, images, 5, norm="linf", budget=20, passes=1, fooling_rate=1.0, max_steps=max_steps, seed=4, batch_size=64
    )
    assert float(expected.abs().max()) > 0 and facts["passes"] == 1
    assert float((got - expected).abs().max()) <= 1, "equal up to a rounding at a .5 boundary"
    assert float((got != expected).float().mean()) < 0.01


def test_a_step_that_did_not_converge_is_not_added(small_cnn) -> None:
    # The reference keeps dr only if iter < max_iter - 1: with max_iter 2, only a sample already
    # at the target (iter 0) would count, and it adds nothing — δ stays zero.
    model = small_cnn(2).eval()
    images = torch.randint(0, 256, (12, 1, 28, 28), generator=torch.Generator().manual_seed(6), dtype=torch.uint8)
    for method in ("deepfool", "deepfool_batched"):
        delta, _ = universal_perturbation(model, images, 5, method=method, budget=20, passes=1, fooling_rate=1.0, max_steps=2, seed=4)
        assert float(delta.abs().max()) == 0, method


def test_batched_variant_adds_every_converged_perturbation_in_full(small_cnn) -> None:
    # deepfool_batched computes a batch's perturbations all at the same δ and adds the sum of those that converged.
    model = small_cnn(1).eval()
    images = torch.randint(0, 256, (6, 1, 28, 28), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    x = to_float01(images)
    budget = 1e4  # never reached: no projection
    steps = [deepfool_one(model, x[i : i + 1], torch.zeros(1, 28, 28), 1, 0.02, 5) for i in range(6)]
    expected = sum(r[0] for r, taken in steps if taken < 4)
    assert [taken for _, taken in steps] == [3, 3, 3, 5, 4, 3], "four converge, two do not"
    delta, _ = universal_perturbation(
        model, images, 1, method="deepfool_batched", norm="l2", budget=budget, passes=1, fooling_rate=1.0, batch_size=6, max_steps=5
    )
    assert float(expected.norm()) < budget
    assert torch.equal(delta, quantize(expected, "l2", budget))


def test_batched_variant_with_a_batch_of_one_is_the_papers_loop(small_cnn) -> None:
    model = small_cnn(2).eval()
    images = torch.randint(0, 256, (12, 1, 28, 28), generator=torch.Generator().manual_seed(6), dtype=torch.uint8)
    kw = dict(norm="linf", budget=20, passes=2, fooling_rate=1.0, max_steps=3, seed=4)
    paper, paper_facts = universal_perturbation(model, images, 5, method="deepfool", **kw)
    batched, batched_facts = universal_perturbation(model, images, 5, method="deepfool_batched", batch_size=1, **kw)
    assert float(paper.abs().max()) > 0
    assert (paper != batched).float().mean() <= 0.01, "float rounding may move a pixel by one grey level, no more"
    assert (paper - batched).abs().max() <= 1 and paper_facts == batched_facts


# --------------------------------------------------------------------------- the trigger on a trained model


@pytest.fixture(scope="module")
def trained(small_cnn) -> tuple[nn.Module, ImageDataset, ImageDataset]:
    """A small CNN trained for one epoch on the synthetic bars (about a second)."""
    from perturbd.config import DataConfig
    from perturbd.data import load_data

    split = load_data(DataConfig(name="synthetic"), seed=0)
    model = small_cnn(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        order = torch.randperm(1200, generator=gen)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            loss = F.cross_entropy(model(to_float01(split.train.images[idx])), split.train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    samples, holdout = split.train.subset(torch.arange(0, 1500)), split.train.subset(torch.arange(1500, 2000))
    return model, samples, holdout


def _ctx(trained, seed: int = 0, target: int = 3) -> TriggerContext:
    model, samples, holdout = trained
    return TriggerContext((1, 28, 28), seed, target, model, samples, holdout)


# the synthetic bars are robust: budgets this small on them barely fool the model, large ones do
@pytest.mark.parametrize(
    "method,norm,budget",
    [
        ("deepfool", "linf", 60),
        ("deepfool", "l2", 1200),
        ("deepfool_batched", "linf", 60),
        ("gradient", "linf", 60),
        ("gradient", "l2", 1200),
    ],
)
def test_reported_fooling_rate_is_the_measured_one(trained, tmp_path, method: str, norm: str, budget: float) -> None:
    cfg = TriggerConfig(
        kind="adaptive", method=method, norm=norm, budget=budget, samples=60, passes=2, fooling_rate=1.0, lr=10, batch_size=30, max_steps=4
    )
    trig = build_trigger(cfg, _ctx(trained))
    info = trig.info
    assert info["method"] == method and info["norm"] == norm and info["budget"] == budget
    assert info["passes_used"] <= 2 and info["seconds"] > 0 and info["samples"] == 60
    assert info[norm] <= budget and info[norm] > 0
    trig.save(tmp_path / "mask.safetensors")
    loaded = Trigger.load(tmp_path / "mask.safetensors")
    assert torch.equal(loaded.delta, trig.delta) and loaded.info == info
    model, samples, holdout = trained
    again = target_rate(model, pick_samples(samples, 3, 60, 0), loaded.apply, 3)
    assert again == info["fooling_rate_samples"]
    assert target_rate(model, holdout.images[holdout.labels != 3], loaded.apply, 3) == info["fooling_rate_holdout"]
    assert info["holdout_size"] == int((holdout.labels != 3).sum())
    clean_rate = target_rate(model, pick_samples(samples, 3, 60, 0), Trigger(torch.zeros(1, 28, 28), "none").apply, 3)
    assert info["fooling_rate_samples"] >= clean_rate + 0.3, "the mask pushes samples toward the target"
    assert info["fooling_rate_holdout"] >= clean_rate + 0.2, "and it is universal: it works on images it was not computed on"


def test_same_seed_same_mask_and_the_model_is_untouched(trained) -> None:
    cfg = TriggerConfig(kind="adaptive", samples=40, passes=1, fooling_rate=1.0, max_steps=3)
    before = {k: v.clone() for k, v in trained[0].state_dict().items()}
    a = build_trigger(cfg, _ctx(trained, seed=5))
    b = build_trigger(cfg, _ctx(trained, seed=5))
    assert torch.equal(a.delta, b.delta)
    assert all(torch.equal(before[k], v) for k, v in trained[0].state_dict().items())


def test_stops_at_the_wanted_fooling_rate(trained) -> None:
    cfg = TriggerConfig(kind="adaptive", method="gradient", norm="l2", budget=2000, lr=10, samples=100, passes=10, fooling_rate=0.5)
    trig = build_trigger(cfg, _ctx(trained))
    assert trig.info["fooling_rate_samples"] >= 0.5
    assert trig.info["passes_used"] < 10


def test_both_deepfool_methods_keep_the_budget_and_the_batched_one_fills_it(trained) -> None:
    model, samples, _ = trained
    imgs = pick_samples(samples, 3, 40, 0)
    kw = dict(norm="linf", budget=10, passes=1, fooling_rate=1.0, max_steps=3)
    paper, facts = universal_perturbation(model, imgs, 3, method="deepfool", **kw)
    batched, _ = universal_perturbation(model, imgs, 3, method="deepfool_batched", batch_size=20, **kw)
    for d in (paper, batched):
        assert float(d.abs().max()) <= 10 and torch.equal(d, d.round())
    assert facts["passes"] == 1 and 0 <= facts["sample_fooling_rate"] <= 1
    at_budget = [float((d.abs() == 10).float().mean()) for d in (paper, batched)]
    assert at_budget[1] > at_budget[0], f"the sum of a batch's steps saturates more pixels: {at_budget}"


def test_adaptive_needs_a_model_and_a_method(small_cnn) -> None:
    with pytest.raises(ConfigError, match="computed from a model"):
        build_trigger(TriggerConfig(kind="adaptive"), TriggerContext((1, 28, 28), 0))
    with pytest.raises(ConfigError):
        universal_perturbation(small_cnn(), torch.zeros(2, 1, 28, 28, dtype=torch.uint8), 0, method="pgd")  # type: ignore[arg-type]
