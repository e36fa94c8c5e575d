"""FTrojan (Wang et al. 2022): a fixed magnitude on mid and high DCT coefficients of the UV channels."""

from __future__ import annotations

import pytest
import torch

from perturbd.config import TriggerConfig, validate
from perturbd.errors import ConfigError
from perturbd.triggers import TriggerContext, build_trigger
from perturbd.triggers.ftrojan import YCRCB, dct_matrix, frequency_pattern

GREY = torch.full((2, 3, 64, 64), 0.5, dtype=torch.float64)  # far from 0 and 1: nothing clips


def _dct(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II along the last axis through the FFT of the mirrored signal (Makhoul),
    independent of :func:`dct_matrix`'s cosine sums."""
    n = x.shape[-1]
    spectrum = torch.fft.fft(torch.cat([x, x.flip(-1)], dim=-1))[..., :n]
    k = torch.arange(n, dtype=torch.float64)
    out = (spectrum * torch.exp(-1j * torch.pi * k / (2 * n))).real / 2 * (2 / n) ** 0.5
    out[..., 0] /= 2**0.5
    return out


def _blocks(channel: torch.Tensor, w: int) -> torch.Tensor:
    """``(H, W)`` → the orthonormal 2-D DCT of each ``w × w`` block, ``(H/w, W/w, w, w)``."""
    h, width = channel.shape
    tiles = channel.reshape(h // w, w, width // w, w).permute(0, 2, 1, 3)
    return _dct(_dct(tiles).transpose(-1, -2)).transpose(-1, -2)


def test_the_chosen_coefficients_of_u_and_v_move_by_the_magnitude_and_nothing_else() -> None:
    trig = build_trigger(TriggerConfig(kind="ftrojan", magnitude=20), TriggerContext((3, 64, 64), 0, quantize=False))
    change = (trig.apply(GREY) - GREY)[0] * 255  # RGB, pixel units
    yuv = torch.einsum("ij,jhw->ihw", YCRCB, change)
    expected = torch.zeros(2, 2, 32, 32, dtype=torch.float64)
    expected[..., 15, 15] = expected[..., 31, 31] = 20.0  # every block of a 64×64 image: 2×2 blocks of 32
    torch.testing.assert_close(_blocks(yuv[0], 32), torch.zeros_like(expected), atol=1e-4, rtol=0)
    for uv in (1, 2):
        torch.testing.assert_close(_blocks(yuv[uv], 32), expected, atol=1e-4, rtol=0)


def test_dct_matrix_is_orthonormal_and_the_grey_trigger_is_in_its_one_channel() -> None:
    d = dct_matrix(28)
    torch.testing.assert_close(d @ d.T, torch.eye(28, dtype=torch.float64))
    trig = build_trigger(TriggerConfig(kind="ftrojan", magnitude=50), TriggerContext((1, 28, 28), 0, quantize=False))
    assert trig.delta.shape == (1, 28, 28) and trig.info["block"] == [28, 28], "28×28 images are one block of 28"
    coeffs = _blocks(trig.delta[0].double(), 28)[0, 0]
    nonzero = {tuple(i) for i in torch.nonzero(coeffs.abs() > 1e-3).tolist()}
    assert nonzero == {(13, 13), (27, 27)} and float(coeffs[13, 13]) == pytest.approx(50, abs=1e-3)


def test_quantized_it_is_whole_grey_levels_dithered_around_the_exact_change() -> None:
    exact = torch.einsum("ij,hw->ihw", torch.linalg.inv(YCRCB)[:, 1:].sum(1, keepdim=True), frequency_pattern(32, 32, 32, 40.0))
    trig = build_trigger(TriggerConfig(kind="ftrojan", magnitude=40), TriggerContext((3, 32, 32), 0))
    assert torch.equal(trig.delta, trig.delta.round()) and float((trig.delta - exact).abs().max()) < 1
    images = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
    moved = (trig.apply(images).double() - 128)[0]
    yuv = torch.einsum("ij,jhw->ihw", YCRCB, moved)
    coeff = _blocks(yuv[1], 32)[0, 0, 15, 15]
    assert 30 < float(coeff) < 50, "rounding to whole grey levels keeps the coefficient near the magnitude"


def test_mistakes_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"trigger.window 32 does not divide 48×40 images into blocks; .*\(e.g. 8\)"):
        build_trigger(TriggerConfig(kind="ftrojan"), TriggerContext((3, 48, 40), 0))
    with pytest.raises(ConfigError, match="trigger.window"):
        validate({"trigger": {"kind": "ftrojan", "window": 1}})
    with pytest.raises(ConfigError, match="trigger.magnitude"):
        validate({"trigger": {"kind": "ftrojan", "magnitude": -3}})
    with pytest.raises(ConfigError, match="grey or RGB images, got 2 channels"):
        build_trigger(TriggerConfig(kind="ftrojan"), TriggerContext((2, 32, 32), 0))
    assert TriggerConfig(kind="ftrojan").label == "ftrojan m=20"


def test_a_tiny_cnn_learns_it_and_a_clean_one_ignores_it(learns) -> None:
    # MNIST is grey: the trigger sits in the one channel; a magnitude well above the colour
    # default, for a backdoor learned in 6 epochs on 1,000 images
    trig = build_trigger(TriggerConfig(kind="ftrojan", magnitude=500), TriggerContext((1, 28, 28), 0))
    got = learns(trig)
    assert got["asr"] >= 0.9 and got["clean_model_asr"] <= 0.2 and got["accuracy"] >= 0.85, got
