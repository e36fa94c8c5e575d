"""LF: its low-pass filters, the band and the budget of the shipped (rounded) mask, seeds, one-line
errors, and the adversary's path under knowledge ``none``."""

from __future__ import annotations

import math

import pytest
import torch

from perturbd.attack import partition, plan_attack
from perturbd.config import TriggerConfig, load_config
from perturbd.data import load_data
from perturbd.data.dataset import ImageDataset
from perturbd.errors import ConfigError, DataError
from perturbd.runs.twins import TwinStore
from perturbd.triggers import Trigger, TriggerContext, build_trigger
from perturbd.triggers.lf import frequency_radius, low_pass, response, scale_into

CLASSES = tuple(str(i) for i in range(10))
SHAPE = (1, 28, 28)
TINY = {"samples": 16, "passes": 1, "max_steps": 10}


def high_energy(delta: torch.Tensor, cutoff: float) -> tuple[float, float]:
    """(energy above ``cutoff`` cycles per pixel, total energy) of ``delta`` ``(C, H, W)``, pixel
    units squared, from its full 2-D FFT (Parseval: the totals equal the sum of squares)."""
    h, w = delta.shape[-2:]
    power = torch.fft.fft2(delta.double()).abs() ** 2 / (h * w)
    radius = torch.sqrt(torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.fftfreq(w)[None, :] ** 2)
    return float(power[..., radius > cutoff + 1e-12].sum()), float(power.sum())


@pytest.fixture
def ctx(small_cnn) -> TriggerContext:
    images = torch.randint(0, 256, (40, *SHAPE), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    samples = ImageDataset(images, torch.arange(40) % 10, CLASSES, "tiny")
    return TriggerContext(SHAPE, 0, 0, small_cnn(0), samples)


# --------------------------------------------------------------------------- the filters


def test_the_ideal_filter_is_a_projection_onto_the_band() -> None:
    delta = torch.randn(3, 28, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20
    gain = response(28, 32, "ideal", 6.0, 0.1)
    once = low_pass(delta, gain)
    high, total = high_energy(once, 0.1)
    assert high <= 1e-20 * total and total > 0, "no energy above the cut-off"
    assert torch.allclose(low_pass(once, gain), once, atol=1e-10), "idempotent"
    assert torch.allclose(((delta - once) * once).sum(), torch.zeros((), dtype=torch.float64), atol=1e-6), "orthogonal"


def test_the_gaussian_filter_scales_each_frequency_by_its_gain() -> None:
    delta = torch.randn(1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = low_pass(delta, response(28, 28, "gaussian", 6.0, 0.1))
    radius = frequency_radius(28, 28)
    ratio = torch.fft.rfft2(out).abs() / torch.fft.rfft2(delta).abs()
    assert torch.allclose(ratio, torch.exp(-2 * math.pi**2 * 36 * radius**2).double().expand_as(ratio), atol=1e-9)
    assert float(ratio[0, 0, 0]) == pytest.approx(1.0), "the mean is kept"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_scaling_into_the_ball_keeps_the_band_where_clipping_would_not(norm: str) -> None:
    gen = torch.Generator().manual_seed(3)
    gain = response(28, 28, "ideal", 6.0, 0.1)
    delta = torch.zeros(1, 28, 28, dtype=torch.float64)
    for _ in range(20):
        delta = scale_into(delta + low_pass(torch.randn(1, 28, 28, generator=gen, dtype=torch.float64) * 30, gain), norm, 10.0)
    size = float(delta.abs().max()) if norm == "linf" else float(delta.norm())
    assert size == pytest.approx(10.0)
    high, total = high_energy(delta, 0.1)
    assert high <= 1e-20 * total
    half = float(delta.abs().max()) / 2
    clipped_high, clipped_total = high_energy(delta.clamp(-half, half), 0.1)
    assert clipped_high > 1e-4 * clipped_total, "clipping puts high frequencies back (why LF scales)"


# --------------------------------------------------------------------------- the shipped mask


def test_the_rounded_mask_keeps_only_rounding_noise_above_the_cut_off_where_the_adaptive_mask_is_broadband(ctx) -> None:
    lf = build_trigger(TriggerConfig(kind="lf", low_pass="ideal", cutoff=0.1, budget=10, **TINY), ctx)
    assert torch.equal(lf.delta, torch.round(lf.delta)) and float(lf.delta.abs().max()) == 10.0
    high, total = high_energy(lf.delta, 0.1)
    # the band-limited δ has none; rounding moves each pixel by at most 1/2, so ‖high(round(δ))‖² ≤ ‖round(δ) − δ‖² ≤ N/4
    assert high <= lf.delta.numel() / 4 and high < 0.02 * total, (high, total)
    adaptive = build_trigger(TriggerConfig(kind="adaptive", budget=10, **TINY), ctx)
    a_high, a_total = high_energy(adaptive.delta, 0.1)
    assert a_high > 0.5 * a_total, "the paper's adaptive mask spreads over every frequency"


def test_the_default_gaussian_mask_is_smooth(ctx) -> None:
    lf = build_trigger(TriggerConfig(kind="lf", **TINY), ctx)
    assert lf.info["low_pass"] == "gaussian" and lf.info["sigma"] == 6.0 and lf.info["budget"] == 25.0
    high, total = high_energy(lf.delta, 0.1)  # the σ = 6 px Gaussian passes less than 1e-3 of the amplitude beyond 0.1
    assert high < 0.01 * total, (high, total)


@pytest.mark.parametrize("norm,budget", [("linf", 7.5), ("l2", 40.0)])
def test_the_budget_holds_on_every_poisoned_uint8_image(ctx, norm: str, budget: float) -> None:
    trig = build_trigger(TriggerConfig(kind="lf", norm=norm, budget=budget, low_pass="ideal", cutoff=0.2, **TINY), ctx)
    images = torch.randint(0, 256, (32, *SHAPE), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    diff = (trig.apply(images).double() - images.double()).flatten(1)
    per_image = diff.abs().amax(1) if norm == "linf" else diff.norm(dim=1)
    assert 0 < float(per_image.max()) <= budget + 1e-9
    assert trig.norms()[norm] <= budget + 1e-9 and trig.info["norm"] == norm


def test_same_seed_same_mask_and_it_saves_and_loads(ctx, tmp_path) -> None:
    cfg = TriggerConfig(kind="lf", **TINY)
    first, again = build_trigger(cfg, ctx), build_trigger(cfg, ctx)
    assert torch.equal(first.delta, again.delta) and first.info["passes_used"] == again.info["passes_used"]
    other = build_trigger(cfg, TriggerContext(SHAPE, 5, 0, ctx.model, ctx.samples))
    assert not torch.equal(first.delta, other.delta), "another seed picks other samples in another order"
    first.save(tmp_path / "lf.safetensors")
    back = Trigger.load(tmp_path / "lf.safetensors")
    assert back.kind == "lf" and back.additive and torch.equal(back.delta, first.delta) and back.info == first.info


def test_mistakes_are_one_line(ctx) -> None:
    with pytest.raises(ConfigError, match=r"trigger.low_pass.*'gaussian' or 'ideal'"):
        load_config(overrides=["trigger.kind=lf", "trigger.low_pass=box"])
    with pytest.raises(ConfigError, match=r"trigger.sigma.*greater than 0"):
        load_config(overrides=["trigger.kind=lf", "trigger.sigma=0"])
    with pytest.raises(ConfigError, match="computed from a model"):
        build_trigger(TriggerConfig(kind="lf"), TriggerContext(SHAPE, 0))
    wrong = ImageDataset(torch.zeros(4, 3, 28, 28, dtype=torch.uint8), torch.arange(4), CLASSES, "rgb")
    with pytest.raises(DataError, match="adversary samples are"):
        build_trigger(TriggerConfig(kind="lf", **TINY), TriggerContext(SHAPE, 0, 0, ctx.model, wrong))


def test_knowledge_none_computes_it_on_the_surrogate_as_the_adaptive_mask() -> None:
    sets = ["data.name=synthetic", "data.train_limit=500", "train.epochs=1", "train.device=cpu", "attack.knowledge=none",
            "attack.surrogate_steps=10", "poison.target=3", "trigger.kind=lf", "trigger.samples=16", "trigger.passes=1",
            "trigger.max_steps=5", "trigger.budget=10"]  # fmt: skip
    cfg = load_config(overrides=sets)
    split = load_data(cfg.data, cfg.seed)
    plan = plan_attack(cfg, split, partition(cfg, split.train.labels, 10), torch.device("cpu"), TwinStore())
    model = plan.record["model"]
    assert plan.trigger.kind == "lf" and model["surrogate"] and model["arch"] != model["victim_arch"]
    assert plan.record["knowledge"] == "none" and plan.record["data"]["disjoint_from_victim"]
    assert plan.record["trigger"] == plan.trigger.info and plan.trigger.info["samples"] == 16
    with pytest.raises(ConfigError, match="below one grey level"):
        plan_attack(cfg.model_copy(update={"trigger": TriggerConfig(kind="lf", budget=0.5)}), split, partition(cfg, split.train.labels, 10),
                    torch.device("cpu"), TwinStore())  # fmt: skip
