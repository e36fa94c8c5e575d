"""Blended (Chen et al. 2017): x' = (1 − α)·x + α·p, p seeded noise or a user's image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from perturbd.config import TriggerConfig
from perturbd.errors import ConfigError
from perturbd.triggers import TriggerContext, build_trigger
from perturbd.triggers.blended import Blend, noise_pattern

IMAGES = torch.randint(0, 256, (5, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_blend_is_the_papers_formula_rounded_for_uint8_exact_for_float() -> None:
    trig = build_trigger(TriggerConfig(kind="blended", alpha=0.2), TriggerContext((1, 8, 8), 0))
    p = trig.delta
    expected = 0.8 * IMAGES.double() + 0.2 * p.double()
    assert isinstance(trig, Blend) and trig.alpha == 0.2
    assert (trig.apply(IMAGES).double() - expected).abs().max() <= 0.5 + 1e-6, "uint8: rounded to the nearest grey level"
    floats = trig.apply(IMAGES.float() / 255)
    torch.testing.assert_close(floats.double() * 255, expected, atol=1e-3, rtol=0)


def test_pattern_is_seeded_noise_of_whole_grey_levels_or_a_users_image(tmp_path) -> None:
    a, b = noise_pattern((3, 8, 8), 1), noise_pattern((3, 8, 8), 2)
    assert torch.equal(a, noise_pattern((3, 8, 8), 1)) and not torch.equal(a, b)
    assert torch.equal(a, a.round()) and float(a.min()) >= 0 and float(a.max()) <= 255
    Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8)).save(tmp_path / "key.png")
    trig = build_trigger(TriggerConfig(kind="blended", path=tmp_path / "key.png", alpha=0.5), TriggerContext((1, 8, 8), 0))
    assert trig.delta.shape == (1, 8, 8) and torch.allclose(trig.delta, torch.full((1, 8, 8), 200.0))
    assert TriggerConfig(kind="blended", path=tmp_path / "key.png").label == "blended key.png α=0.2"


def test_mistakes_are_one_line(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read the blend image"):
        build_trigger(TriggerConfig(kind="blended", path=tmp_path / "missing.png"), TriggerContext((1, 8, 8), 0))
    with pytest.raises(ConfigError, match=r"alpha must be in \(0, 1\)"):
        Blend(torch.zeros(1, 8, 8), "blended", alpha=1.5)
    with pytest.raises(ConfigError, match="not an additive mask"):
        build_trigger(TriggerConfig(kind="blended"), TriggerContext((1, 8, 8), 0)).mask()
