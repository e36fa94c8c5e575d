"""TeCo's fifteen corruptions, batched in torch: every one keeps shape and range on grey, colour
and tiny images, is reproducible from its generator, grows with severity, and the deterministic
ones agree with the libraries the ``imagecorruptions`` package computes them with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import hsv2rgb, rgb2hsv
from skimage.filters import gaussian

from perturbd.defenses.corruptions import CORRUPTIONS, _gaussian, corrupt

SHAPES = [(3, 1, 28, 28), (3, 3, 32, 32), (2, 3, 5, 7)]


def _images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).float() / 255


@pytest.mark.parametrize("name", list(CORRUPTIONS))
@pytest.mark.parametrize("shape", SHAPES, ids=["grey", "colour", "tiny"])
def test_shape_range_reproducible_and_input_untouched(name: str, shape: tuple[int, ...]) -> None:
    x = _images(shape)
    before = x.clone()
    for s in range(1, 6):
        y = corrupt(x, name, s, torch.Generator().manual_seed(7))
        assert y.shape == x.shape and y.dtype == torch.float32 and float(y.min()) >= 0 and float(y.max()) <= 1
        assert torch.equal(y * 255, (y * 255).round()), "8-bit levels"
        assert torch.equal(y, corrupt(x, name, s, torch.Generator().manual_seed(7))), "same generator, same corruption"
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_five_changes_more_than_severity_one(name: str) -> None:
    x = _images((8, 3, 32, 32), seed=1)
    change = [float((corrupt(x, name, s, torch.Generator().manual_seed(0)) - x).abs().mean()) for s in (1, 5)]
    assert change[1] > change[0] > 0


def test_contrast_and_grey_brightness_are_the_packages_formulas() -> None:
    x = _images((2, 1, 8, 8))
    mean = x.mean((2, 3), keepdim=True)
    expected = (((x - mean) * 0.2 + mean).clamp(0, 1) * 255 + 1e-3).floor() / 255
    assert torch.equal(corrupt(x, "contrast", 3, torch.Generator()), expected)
    assert torch.equal(corrupt(x, "brightness", 5, torch.Generator()), ((x + 0.5).clamp(0, 1) * 255 + 1e-3).floor() / 255)


def test_colour_brightness_lifts_hsv_value_as_scikit_image() -> None:
    x = _images((1, 3, 8, 8), seed=2)
    hsv = rgb2hsv(x[0].permute(1, 2, 0).double().numpy())
    hsv[..., 2] = np.clip(hsv[..., 2] + 0.3, 0, 1)
    expected = np.floor(np.clip(hsv2rgb(hsv), 0, 1) * 255 + 1e-3)
    ours = corrupt(x, "brightness", 3, torch.Generator())[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(ours - expected).max() <= 1


def test_blur_is_scikit_images_gaussian() -> None:
    x = _images((1, 3, 12, 12), seed=3)
    expected = gaussian(x[0].permute(1, 2, 0).double().numpy(), sigma=1.5, channel_axis=-1)  # mode "nearest", 4 σ
    assert np.allclose(_gaussian(x, 1.5)[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_pixelate_is_pils_box_then_nearest(severity: int) -> None:
    x = _images((1, 3, 32, 32), seed=4)
    pixels = (x[0].permute(1, 2, 0) * 255).round().byte().numpy()
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    img = Image.fromarray(pixels).resize((int(32 * c), int(32 * c)), Image.Resampling.BOX)
    expected = np.asarray(img.resize((32, 32), Image.Resampling.NEAREST)).astype(int)
    ours = (corrupt(x, "pixelate", severity, torch.Generator())[0].permute(1, 2, 0) * 255).round().int().numpy()
    assert np.abs(ours - expected).max() <= 1, "PIL's fixed-point rounding: one level at most"
