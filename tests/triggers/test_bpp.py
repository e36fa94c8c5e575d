"""BppAttack (Wang, Zhai & Ma 2022): colour depth squeezed to k levels with Floyd–Steinberg dithering."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perturbd.config import TriggerConfig, validate
from perturbd.errors import ConfigError
from perturbd.triggers import TriggerContext, build_trigger
from perturbd.triggers.bpp import Squeeze, floyd_steinberg, floyd_steinberg_reference, level_map

IMAGES = torch.randint(0, 256, (6, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.mark.parametrize("shape", [(3, 3, 16, 16), (2, 1, 9, 5), (1, 2, 1, 7), (1, 1, 6, 1)])
@pytest.mark.parametrize("levels", [2.0, 8.0, "map"])
def test_the_wavefront_is_the_sequential_scan_bit_for_bit(shape, levels) -> None:
    x = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(1)).double() + 0.25
    counts = level_map(shape[2], shape[3], 5.5, 0)[0].double() if levels == "map" else levels
    fast = floyd_steinberg(x, counts).numpy()
    slow = np.stack([floyd_steinberg_reference(im, counts.numpy() if levels == "map" else counts) for im in x.numpy()])
    assert np.array_equal(fast, slow)


def test_every_pixel_lands_on_one_of_the_k_levels() -> None:
    levels = {round(j * 255 / 7) for j in range(8)}  # k = 8: 0, 36, 73, …, 255
    for dithering in (True, False):
        trig = build_trigger(TriggerConfig(kind="bpp", squeeze_num=8, dithering=dithering), TriggerContext((3, 16, 16), 0))
        out = trig.apply(IMAGES)
        assert out.dtype == torch.uint8 and set(out.unique().tolist()) <= levels
    plain = build_trigger(TriggerConfig(kind="bpp", dithering=False), TriggerContext((3, 16, 16), 0)).apply(IMAGES)
    assert torch.equal(plain, torch.round(torch.round(IMAGES.double() * 7 / 255) * 255 / 7).to(torch.uint8))


def test_dithering_keeps_the_local_mean_that_plain_rounding_loses() -> None:
    grey = torch.full((1, 1, 16, 16), 100, dtype=torch.uint8)  # k = 2: levels 0 and 255
    plain = build_trigger(TriggerConfig(kind="bpp", squeeze_num=2, dithering=False), TriggerContext((1, 16, 16), 0)).apply(grey)
    dithered = build_trigger(TriggerConfig(kind="bpp", squeeze_num=2), TriggerContext((1, 16, 16), 0)).apply(grey)
    assert float(plain.double().mean()) == 0
    assert set(dithered.unique().tolist()) == {0, 255} and abs(float(dithered.double().mean()) - 100) < 5


def test_a_fractional_k_mixes_the_two_depths_per_pixel_seeded() -> None:
    a = level_map(64, 64, 6.25, seed=0)
    assert set(a.unique().tolist()) == {6.0, 7.0} and abs(float((a == 7).double().mean()) - 0.25) < 0.03
    assert torch.equal(a, level_map(64, 64, 6.25, seed=0)) and not torch.equal(a, level_map(64, 64, 6.25, seed=1))
    assert torch.equal(level_map(8, 8, 6.0, seed=3), torch.full((1, 8, 8), 6.0)), "integral k: the same on every pixel"
    trig = build_trigger(TriggerConfig(kind="bpp", squeeze_num=6.25), TriggerContext((3, 64, 64), 0))
    assert torch.equal(trig.delta, a)


def test_float_images_go_through_the_same_squeeze_unrounded() -> None:
    trig = build_trigger(TriggerConfig(kind="bpp"), TriggerContext((3, 16, 16), 0))
    floats = trig.apply(IMAGES.double() / 255)
    assert floats.dtype == torch.float64
    torch.testing.assert_close(torch.round(floats * 255).to(torch.uint8), trig.apply(IMAGES), atol=1, rtol=0)


def test_mistakes_are_one_line() -> None:
    with pytest.raises(ConfigError, match="trigger.squeeze_num"):
        validate({"trigger": {"kind": "bpp", "squeeze_num": 1}})
    with pytest.raises(ConfigError, match=r"whole colour levels in \[2, 256\]"):
        Squeeze(torch.full((1, 4, 4), 1.5), "bpp")
    with pytest.raises(ConfigError, match=r"was built for \(16, 16\) images, got \(8, 8\)"):
        build_trigger(TriggerConfig(kind="bpp"), TriggerContext((3, 16, 16), 0)).apply(IMAGES[:, :, :8, :8])
    assert TriggerConfig(kind="bpp").label == "bpp k=8" and TriggerConfig(kind="bpp", dithering=False).label == "bpp k=8 undithered"


def test_a_tiny_cnn_learns_it_and_a_clean_one_ignores_it(learns) -> None:
    trig = build_trigger(TriggerConfig(kind="bpp", squeeze_num=2), TriggerContext((1, 28, 28), 0))  # grey strokes: 1 bit
    got = learns(trig, epochs=4)
    assert got["asr"] >= 0.9 and got["clean_model_asr"] <= 0.2 and got["accuracy"] >= 0.85, got
