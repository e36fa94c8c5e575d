"""Adversarial training at a radius covering the trigger removes the planted backdoor."""

from __future__ import annotations

import torch

from perturbd.defenses import build_defense
from perturbd.defenses.adversarial_training import pgd_linf


def test_removes_the_planted_backdoor(mitigates) -> None:
    # a few steps of the size that scales with ε, not the paper's 40: the test runs in seconds
    mitigates("adversarial_training", {"n_clean": 300, "epsilon": 64, "steps": 5, "step_size": None}, 0.3)


def test_the_defaults_are_madry_et_als_mnist_setting() -> None:
    d = build_defense("adversarial_training")
    assert (d.epsilon, d.steps, d.step_size, d.clean_weight) == (76.5, 40, 2.55, 0.0)


def test_pgd_stays_in_the_ball_and_the_image_range(planted) -> None:
    x = planted.clean.images[:16].float() / 255
    y = planted.clean.labels[:16]
    adv = pgd_linf(planted.model, x, y, 8 / 255, 3, 4 / 255, torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
