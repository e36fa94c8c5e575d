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
