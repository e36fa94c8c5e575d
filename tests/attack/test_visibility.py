"""Equal visibility: a mask's strength searched so that its poisoned images have a given PSNR."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from perturbd.attack.visibility import at_psnr, mean_psnr
from perturbd.config import TriggerConfig
from perturbd.errors import ConfigError
from perturbd.triggers import TriggerContext, build_trigger

IMAGES = torch.randint(0, 256, (64, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def _build(quantize: bool):
    def build(cfg: TriggerConfig):
        built.append(cfg)
        return replace(build_trigger(cfg, TriggerContext((1, 28, 28), 0)), quantize=quantize)

    built: list[TriggerConfig] = []
    return build, built


@pytest.mark.parametrize("kind", ["grid", "chessboard", "ring", "random"])
def test_an_unrounded_mask_lands_on_the_asked_psnr(kind: str) -> None:
    build, built = _build(quantize=False)
    trig = at_psnr(TriggerConfig(kind=kind, psnr=37.0), build, IMAGES)
    assert abs(mean_psnr(trig, IMAGES) - 37.0) <= 0.05 and len(built) <= 6
    assert trig.info["psnr_goal"] == 37.0 and abs(trig.info["psnr_on_adversary_images"] - 37.0) <= 0.05
    assert all(c.psnr is None for c in built), "each try builds a mask of one strength"


def test_a_rounded_mask_keeps_the_closest_strength_and_says_how_close() -> None:
    build, _ = _build(quantize=True)
    trig = at_psnr(TriggerConfig(kind="chessboard", psnr=34.5), build, IMAGES)
    reached = mean_psnr(trig, IMAGES)
    assert trig.info["psnr_on_adversary_images"] == pytest.approx(reached)
    for c in (5.0, 6.0, 7.0, 8.0):  # no whole grey level comes closer
        other = build(TriggerConfig(kind="chessboard", amplitude=c))
        assert abs(reached - 34.5) <= abs(mean_psnr(other, IMAGES) - 34.5) + 1e-9


def test_without_psnr_the_mask_is_built_as_configured_and_numpy_masks_cannot_be_scaled(tmp_path) -> None:
    build, built = _build(quantize=True)
    at_psnr(TriggerConfig(kind="grid", amplitude=7), build, IMAGES)
    assert [c.amplitude for c in built] == [7]
    with pytest.raises(ConfigError, match="only PNG masks"):
        at_psnr(TriggerConfig(kind="image", path=tmp_path / "m.npy", psnr=30), build, IMAGES)
    assert TriggerConfig(kind="grid", psnr=34.5).label == "grid at PSNR 34.5 dB"
