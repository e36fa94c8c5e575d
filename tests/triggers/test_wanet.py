"""WaNet (Nguyen & Tran 2021): a fixed smooth warping field, applied with grid_sample, and its noise mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perturbd.config import TriggerConfig, validate
from perturbd.errors import ConfigError
from perturbd.triggers import TriggerContext, build_trigger
from perturbd.triggers.wanet import Warp, identity_grid, warp_field

IMAGES = torch.randint(0, 256, (4, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_the_field_is_the_papers_recipe() -> None:
    grid = warp_field(28, 28, 4, 0.5, seed=0)
    assert grid.shape == (28, 28, 2) and float(grid.abs().max()) <= 1
    offset = (grid - identity_grid(28, 28)) * 28 / 0.5  # back to the upsampled, normalised k×k noise
    assert 0.5 < float(offset.abs().mean()) < 1.5, "noise normalised by its mean absolute value"
    assert torch.equal(grid, warp_field(28, 28, 4, 0.5, seed=0)) and not torch.equal(grid, warp_field(28, 28, 4, 0.5, seed=1))


def test_a_zero_warp_is_the_identity_and_the_warp_is_grid_sample() -> None:
    still = Warp(identity_grid(28, 28).permute(2, 0, 1), "wanet")
    assert torch.equal(still.apply(IMAGES), IMAGES)
    trig = build_trigger(TriggerConfig(kind="wanet"), TriggerContext((1, 28, 28), 0))
    floats = IMAGES.float() / 255
    expected = F.grid_sample(floats, trig.grid[None].expand(4, -1, -1, -1), align_corners=True)
    torch.testing.assert_close(trig.apply(floats), expected.clamp(0, 1))
    assert torch.equal(trig.apply(IMAGES), torch.round(expected.clamp(0, 1) * 255).to(torch.uint8))


def test_noise_mode_warps_each_image_differently_but_near_the_field() -> None:
    trig = build_trigger(TriggerConfig(kind="wanet"), TriggerContext((1, 28, 28), 0))
    noisy = trig.noisy(IMAGES, torch.Generator().manual_seed(0))
    again = trig.noisy(IMAGES, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again) and noisy.dtype == torch.uint8
    assert not torch.equal(noisy, trig.apply(IMAGES))


def test_mistakes_are_one_line() -> None:
    with pytest.raises(ConfigError, match="grid_k 8 does not fit 6×6"):
        build_trigger(TriggerConfig(kind="wanet", grid_k=8), TriggerContext((1, 6, 6), 0))
    with pytest.raises(ConfigError, match="trigger.grid_k"):
        validate({"trigger": {"kind": "wanet", "grid_k": 1}})
    with pytest.raises(ConfigError, match="measured on images"):
        build_trigger(TriggerConfig(kind="wanet"), TriggerContext((1, 28, 28), 0)).norms()
    assert TriggerConfig(kind="wanet").label == "wanet k=4 s=0.5"
