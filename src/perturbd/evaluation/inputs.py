"""What defences are run on and measured with (:class:`DefenseInputs`), and the defender's clean
images (:func:`defender_clean_set`): training images the attacker did not touch (neither poisoned
nor changed otherwise, as wanet's noise-mode images), disjoint from the test images used to measure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from perturbd.config import TrainConfig
from perturbd.data.dataset import ImageDataset
from perturbd.seeding import derived_generator
from perturbd.triggers import Trigger


@dataclass(frozen=True)
class DefenseInputs:
    """What defences are run on and measured with.

    Attributes:
        model: the model under test (backdoored, or suspected to be).
        test: test images, for ASR, clean accuracy and input screening.
        clean: the defender's clean images, disjoint from ``test``, pre-shuffled (each defence
            takes the first ``n_clean``).
        clean_source: one line saying where ``clean`` came from, written to ``defenses.json``.
        train: the training set as trained on (with the poison), for dataset screening.
        poison_indices: positions of the poisoned images in ``train`` (ground truth).
        trigger, target: the attack's trigger and target label (ground truth).
        clean_model: the clean twin, for the false-positive baseline of model inspection (in
            the update setting: the model after a clean update).
        before_model: the model before the update (update setting only), for the update audit.
        seed: the run seed: defences' unset seeds and the sample of screened test images derive from it.
        sources: the source classes of a source-specific attack (None: every class but the
            target): every ASR a defence reports counts only their test images, and input
            screens are measured on triggered images of these classes only.
        initial_model: returns a fresh model with the victim's initial weights (before any
            training), for a training-time defence, which trains its own victim on ``train``.
        train_config: the victim's training recipe, for a training-time defence.
    """

    model: nn.Module
    test: ImageDataset
    clean: ImageDataset
    clean_source: str = "given"
    train: ImageDataset | None = None
    poison_indices: torch.Tensor | None = None
    trigger: Trigger | None = None
    target: int | None = None
    clean_model: nn.Module | None = None
    before_model: nn.Module | None = None
    seed: int = 0
    sources: tuple[int, ...] | None = None
    initial_model: Callable[[], nn.Module] | None = None
    train_config: TrainConfig | None = None


def defender_clean_set(
    train: ImageDataset, poison_indices: torch.Tensor | None, seed: int, touched: torch.Tensor | None = None
) -> ImageDataset:
    """The defender's clean images: the training split minus every image the attacker touched, in
    a seeded random order (so the first ``n`` are a random sample). Disjoint from the test split.

    ``poison_indices``: the poisoned positions; ``touched``: the other positions the attacker
    changed but left at their labels (:attr:`perturbd.poisoning.PoisonedSet.noise_indices`:
    wanet's noise-mode images, warped with random grids), left out as well.
    """
    keep = torch.ones(len(train), dtype=torch.bool)
    for gone in (poison_indices, touched):
        if gone is not None and len(gone):
            keep[gone] = False
    idx = torch.nonzero(keep).flatten()
    order = torch.randperm(len(idx), generator=derived_generator(seed, "defender"))
    return train.subset(idx[order])
