"""Adap-Blend (Qi et al. 2023): random patches of a blend pattern in training, the whole pattern at a
stronger α at test time, and cover images kept at their labels."""

from __future__ import annotations

import pytest
import torch

from perturbd.config import PoisonConfig, TriggerConfig, validate
from perturbd.data.dataset import ImageDataset
from perturbd.errors import ConfigError
from perturbd.poisoning import poison_dataset
from perturbd.triggers import TriggerContext, build_trigger
from perturbd.triggers.adap_blend import AdaptiveBlend, piece_map

IMAGES = torch.randint(0, 256, (5, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_the_pattern_is_cut_into_the_papers_sixteen_patches() -> None:
    pieces = piece_map(32, 32, 16)
    assert pieces.unique().tolist() == list(range(16)) and all(int((pieces == i).sum()) == 64 for i in range(16)), "4×4 patches of 8×8"
    assert piece_map(28, 28, 16)[7, 7] == 5 and int((piece_map(28, 28, 16) == 0).sum()) == 49, "MNIST: 7×7 patches"
    assert int((piece_map(30, 30, 16) == 0).sum()) == 64 and int((piece_map(30, 30, 16) == 1).sum()) == 56, "row i in ⌊4i / 30⌋"


def test_each_training_copy_blends_half_the_patches_at_alpha_and_the_test_form_all_at_test_alpha() -> None:
    trig = build_trigger(TriggerConfig(kind="adap_blend"), TriggerContext((3, 32, 32), 0, quantize=False))
    assert isinstance(trig, AdaptiveBlend) and trig.train_alpha == 0.15 and trig.test_alpha == pytest.approx(0.2)
    assert trig.info["alpha"] == 0.15 and trig.info["test_alpha"] == pytest.approx(0.2)
    x = IMAGES.double() / 255
    p = trig.delta.double() / 255
    copies = trig.poison_copies(x, seed=0)
    full = x + 0.15 * (p - x)
    pieces = piece_map(32, 32, 16)
    for image, copy, blended in zip(x, copies, full):
        changed = [bool(torch.allclose(copy[:, pieces == i], blended[:, pieces == i])) for i in range(16)]
        kept = [bool(torch.equal(copy[:, pieces == i], image[:, pieces == i])) for i in range(16)]
        assert sum(changed) == 8 and sum(kept) == 8 and all(a != b for a, b in zip(changed, kept))
    assert not torch.equal(copies[0], copies[1]), "a fresh subset per image"
    assert torch.equal(copies, trig.poison_copies(x, seed=0)) and not torch.equal(copies, trig.poison_copies(x, seed=1))
    torch.testing.assert_close(trig.apply(x), (0.8 * x + 0.2 * p).clamp(0, 1))


def test_cover_images_get_the_training_form_and_keep_their_labels() -> None:
    n = 1000
    data = ImageDataset(IMAGES.repeat(200, 1, 1, 1), torch.arange(n) % 10, tuple("0123456789"), "tiny")
    trig = build_trigger(TriggerConfig(kind="adap_blend", cover_rate=0.01), TriggerContext((3, 32, 32), 0))
    p = poison_dataset(data, trig, PoisonConfig(rate=0.02, target=0), seed=0)
    cover = p.noise_indices
    assert len(p.indices) == 20 and len(cover) == 10 and not set(cover.tolist()) & set(p.indices.tolist())
    assert torch.equal(p.dataset.labels[cover], data.labels[cover]) and bool((p.dataset.labels[p.indices] == 0).all())
    assert all(not torch.equal(p.dataset.images[i], data.images[i]) for i in cover.tolist())
    assert torch.equal(cover, poison_dataset(data, trig, PoisonConfig(rate=0.02, target=0), seed=0).noise_indices), "seeded"


def test_test_alpha_is_explicit_and_follows_alpha_unless_set() -> None:
    assert TriggerConfig(kind="adap_blend").label == "adap_blend α=0.15 test α=0.2"
    assert TriggerConfig(kind="adap_blend", alpha=0.3).params.test_weight == pytest.approx(0.4)
    assert TriggerConfig(kind="adap_blend", alpha=0.3, test_alpha=0.25).label == "adap_blend α=0.3 test α=0.25"
    assert TriggerConfig(kind="adap_blend", psnr=34.5).label == "adap_blend test α=4/3·α at PSNR 34.5 dB"
    assert TriggerConfig(kind="adap_blend", psnr=34.5, test_alpha=0.2).label == "adap_blend test α=0.2 at PSNR 34.5 dB"
    assert TriggerConfig(kind="adap_blend", alpha=0.9).params.test_weight == 1.0


def test_mistakes_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"trigger.pieces.*must be a square number \(4, 9, 16, …\), got 15$"):
        validate({"trigger": {"kind": "adap_blend", "pieces": 15}})
    with pytest.raises(ConfigError, match="trigger.mask_rate"):
        validate({"trigger": {"kind": "adap_blend", "mask_rate": 1}})
    with pytest.raises(ConfigError, match=r"trigger.pieces 100 \(10×10 patches\) does not fit 8×8 images; use at most 64 pieces"):
        build_trigger(TriggerConfig(kind="adap_blend", pieces=100), TriggerContext((1, 8, 8), 0))
    with pytest.raises(ConfigError, match="adap_blend needs train_alpha in"):
        AdaptiveBlend(torch.zeros(1, 8, 8), "adap_blend", train_alpha=1.5)


def test_a_tiny_cnn_learns_it_and_a_clean_one_ignores_it(learns) -> None:
    trig = build_trigger(TriggerConfig(kind="adap_blend", alpha=0.2, cover_rate=0.05), TriggerContext((1, 28, 28), 0))
    got = learns(trig, epochs=4)
    assert got["asr"] >= 0.9 and got["clean_model_asr"] <= 0.2 and got["accuracy"] >= 0.85, got
