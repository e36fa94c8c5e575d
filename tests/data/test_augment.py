"""Batched augmentation: shapes, reproducibility, and that it really translates and flips."""

from __future__ import annotations

import torch

from perturbd.data.augment import augment, random_crop, random_flip, resolve_augment


def test_crop_is_a_translation_with_zero_fill() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1) + 1
    out = random_crop(x, 1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for img in out:
        nz = img[0][img[0] > 0]
        assert len(nz) in (9, 12, 16)  # shifted by 0 or 1 pixel in each direction
    assert not torch.equal(out, x)


def test_flip_mirrors_about_half() -> None:
    x = torch.arange(4.0).view(1, 1, 1, 4).repeat(1000, 1, 1, 1)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 3).float().mean()
    assert 0.4 < float(flipped) < 0.6
    assert torch.equal(out[out[:, 0, 0, 0] == 3][0, 0, 0], torch.tensor([3.0, 2, 1, 0]))


def test_same_generator_seed_same_batch() -> None:
    x = torch.rand(8, 3, 8, 8)
    a = augment(x, "crop_flip", torch.Generator().manual_seed(1))
    b = augment(x, "crop_flip", torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_auto_means_no_flip_for_digits() -> None:
    assert resolve_augment("auto", 1) == "none" and resolve_augment("auto", 3) == "crop_flip"
