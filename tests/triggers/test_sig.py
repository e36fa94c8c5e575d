"""SIG (Barni et al. 2019): a horizontal sinusoid Δ·sin(2π j f / m), or the ramp Δ·j/m of the authors'
MNIST code, additive, dithered to whole grey levels."""

from __future__ import annotations

import math

import torch

from perturbd.config import TriggerConfig
from perturbd.triggers import Trigger, TriggerContext, build_trigger
from perturbd.triggers.sig import ramp_pattern, sig_pattern


def test_the_signal_is_the_papers_sinusoid() -> None:
    v = sig_pattern(4, 28, 20.0, 6.0)
    assert v.shape == (1, 4, 28) and torch.equal(v[0, 0], v[0, 3]), "the same on every row"
    assert math.isclose(float(v[0, 0, 1]), 20 * math.sin(2 * math.pi * 6 / 28), rel_tol=1e-6)
    assert float(v.abs().max()) <= 20.0


def test_quantized_sig_is_dithered_to_whole_levels_and_unquantized_is_exact() -> None:
    cfg = TriggerConfig(kind="sig")
    rounded = build_trigger(cfg, TriggerContext((1, 28, 28), 0))
    exact = build_trigger(cfg, TriggerContext((1, 28, 28), 0, quantize=False))
    assert type(rounded) is Trigger and rounded.additive and rounded.kind == "sig"
    assert torch.equal(rounded.delta, rounded.delta.round()) and (rounded.delta - exact.delta).abs().max() < 1
    assert torch.equal(exact.delta, sig_pattern(28, 28, 20.0, 6.0))
    # dithering keeps the signal's energy: mean square within a few percent of Δ²/2
    assert abs(float(rounded.delta.pow(2).mean()) / (20**2 / 2) - 1) < 0.05
    assert torch.equal(rounded.delta, build_trigger(cfg, TriggerContext((1, 28, 28), 0)).delta), "same seed, same mask"
    assert cfg.label == "sig Δ=20 f=6" and cfg.strength_key == "sig_amplitude"


def test_the_ramp_is_the_authors_mnist_signal() -> None:
    v = ramp_pattern(3, 28, 30.0)
    assert v.shape == (1, 3, 28) and torch.equal(v[0, 0], v[0, 2]), "the same on every row"
    assert float(v[0, 0, 0]) == 0.0 and math.isclose(float(v[0, 0, 27]), 30 * 27 / 28, rel_tol=1e-6), "j / m, as np.arange(0, m) / m"
    assert torch.all(v[0, 0, 1:] > v[0, 0, :-1]), "rising left to right"


def test_quantized_ramp_is_dithered_and_clipped_not_wrapped() -> None:
    cfg = TriggerConfig(kind="sig_ramp", sig_amplitude=30)
    rounded = build_trigger(cfg, TriggerContext((1, 28, 28), 0))
    exact = build_trigger(cfg, TriggerContext((1, 28, 28), 0, quantize=False))
    assert rounded.additive and rounded.kind == "sig_ramp" and torch.equal(exact.delta, ramp_pattern(28, 28, 30.0))
    assert torch.equal(rounded.delta, rounded.delta.round()) and (rounded.delta - exact.delta).abs().max() < 1
    column_means = rounded.delta[0].mean(0)
    assert (column_means - exact.delta[0, 0]).abs().max() < 0.35, "dithering keeps each column's level"
    white = torch.full((1, 1, 28, 28), 250, dtype=torch.uint8)
    assert int(rounded.apply(white).min()) >= 250, "a bright pixel saturates at 255, it does not wrap to a dark one"
    assert cfg.label == "sig_ramp Δ=30" and cfg.strength_key == "sig_amplitude"


def test_the_wrap_kinds_are_the_authors_uint8_cast_of_the_same_signal() -> None:
    """``sig_ramp_wrap``: ``(x + v) mod 256`` of the dithered ramp of ``sig_ramp``, as the authors'
    ``np.uint8(x + Δ·ramp)``: a saturated stroke pixel wraps to a dark one; below 255 it adds."""
    cfg = TriggerConfig(kind="sig_ramp_wrap", sig_amplitude=30)
    wrapped = build_trigger(cfg, TriggerContext((1, 28, 28), 0))
    clipped = build_trigger(TriggerConfig(kind="sig_ramp", sig_amplitude=30), TriggerContext((1, 28, 28), 0))
    assert not wrapped.additive and wrapped.family == "wrap" and wrapped.kind == "sig_ramp_wrap"
    assert torch.equal(wrapped.delta, clipped.delta), "the same dithered signal; only overflow differs"
    v = clipped.delta.round().to(torch.int64)
    images = torch.randint(0, 256, (5, 1, 28, 28), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    images[0] = 255
    expected = ((images.to(torch.int64) + v) % 256).to(torch.uint8)
    out = wrapped.apply(images)
    assert torch.equal(out, expected)
    assert int(out[0, 0, :, 0].min()) == 255 and int(out[0, 0, :, -1].max()) <= 29, "255 + 0 stays, 255 + 28 or 29 wraps to 27 or 28"
    small = images.to(torch.int64) + v < 256
    assert torch.equal(out[small], clipped.apply(images)[small]), "where nothing overflows, it is sig_ramp"
    floats = wrapped.apply(images.float() / 255)  # quantized trigger on float images: the same sum, unrounded δ is whole anyway
    assert torch.allclose(floats * 255, expected.float(), atol=1e-3)
    soft = build_trigger(cfg, TriggerContext((1, 28, 28), 0, quantize=False))
    assert torch.equal(soft.delta, ramp_pattern(28, 28, 30.0))
    assert cfg.label == "sig_ramp_wrap Δ=30" and cfg.strength_key == "sig_amplitude"


def test_sig_wrap_wraps_below_zero_too() -> None:
    cfg = TriggerConfig(kind="sig_wrap", sig_amplitude=20, frequency=6)
    trig = build_trigger(cfg, TriggerContext((1, 8, 28), 0))
    black = torch.zeros(1, 1, 8, 28, dtype=torch.uint8)
    v = trig.delta.round().to(torch.int64)
    assert torch.equal(trig.apply(black)[0].to(torch.int64), v % 256), "a black pixel minus k grey levels is 256 − k"
    assert int(trig.apply(black).max()) > 230 and cfg.label == "sig_wrap Δ=20 f=6"
