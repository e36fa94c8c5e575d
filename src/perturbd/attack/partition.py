"""Who holds which training images: the partition of the training split, computed once per run.

Every part is a sorted set of indices into the training split (the hold-out keeps its
stratified draw order), drawn from its own derived generator (:mod:`perturbd.seeding`):

| part | what it is |
|---|---|
| ``auxiliary`` | a stratified ``attack.aux_fraction`` the victim never sees: the adversary's own data when it does not know the victim's |
| ``victim`` | the victim's data: the training split less ``auxiliary`` |
| ``update`` | the update setting: a stratified ``attack.update_size`` of ``victim``, new data for the update |
| ``initial`` | what the victim's clean model trains on: ``victim`` less ``update`` |
| ``adversary`` | the adversary's data: ``initial`` when its knowledge level holds the victim's data \
(:data:`~perturbd.knowledge.KNOWLEDGE`: ``full``, ``data``), else ``auxiliary`` |
| ``holdout`` | a stratified ``attack.holdout_fraction`` of ``adversary``, kept out of its training and its mask samples |
| ``fit`` | ``adversary`` less ``holdout`` |
| ``poison`` | positions, within the set the poison is injected into (``victim``, or ``update`` when updating), of the images to poison |

:func:`partition` makes every size check of the attack before any work: a part too small is
one line saying which fraction or size to change. Nothing downstream splits the data again.

The auxiliary data is held out under every knowledge level (``attack.same_victim``, the
default), for static masks too: the victim, its clean twin and the poisoned count are then the
same whatever the adversary knows, so knowledge levels compare adversaries, not victims. With
``same_victim: false`` it is held out only when the adversary does not know the victim's data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from perturbd.config import ExperimentConfig
from perturbd.data import stratified_indices
from perturbd.data.dataset import ImageDataset
from perturbd.errors import ConfigError
from perturbd.knowledge import KNOWLEDGE
from perturbd.poisoning import choose_indices
from perturbd.seeding import complement, derived_generator

MIN_PER_CLASS = 5  # images per class the adversary and the victim must each keep, at least


@dataclass(frozen=True)
class Partition:
    """The parts of the training split (see the module docstring); ``None`` where a part does
    not exist in this run."""

    size: int
    victim: torch.Tensor
    initial: torch.Tensor
    adversary: torch.Tensor
    holdout: torch.Tensor
    fit: torch.Tensor
    poison: torch.Tensor
    auxiliary: torch.Tensor | None = None
    update: torch.Tensor | None = None

    @property
    def poisoned_set(self) -> torch.Tensor:
        """The set the poison is injected into: the update batch when updating, else the victim's data."""
        return self.update if self.update is not None else self.victim

    def take(self, train: ImageDataset, part: torch.Tensor) -> ImageDataset:
        """The images of ``part`` (one of this partition's index sets) of ``train``; ``train``
        itself when the part is all of it, in order."""
        if len(train) != self.size:
            raise ValueError(f"the partition is of {self.size} training images, not {len(train)}")
        if len(part) == self.size and bool((part == torch.arange(self.size)).all()):
            return train
        return train.subset(part)


def indices_hash(indices: torch.Tensor) -> str:
    """SHA-256 (first 16 hex digits) of sorted int64 indices: names a subset in ``adversary.json``."""
    return hashlib.sha256(indices.sort().values.to(torch.int64).numpy().tobytes()).hexdigest()[:16]


def partition(cfg: ExperimentConfig, labels: torch.Tensor, num_classes: int) -> Partition:
    """Split the training images with labels ``labels`` as ``cfg`` says (module docstring).

    Raises:
        ConfigError: a part too small (auxiliary data, the victim's rest, the update batch, the
            initial training, the adversary's hold-out) or a poison that does not fit its set.
    """
    n, a = len(labels), cfg.attack
    need = MIN_PER_CLASS * num_classes
    auxiliary = None
    victim = torch.arange(n)
    if a.same_victim or not KNOWLEDGE[a.knowledge].data:
        aux_n = round(a.aux_fraction * n)
        if aux_n < need or n - aux_n < need:
            who, got = ("adversary", aux_n) if aux_n < need else ("victim", n - aux_n)
            fix = (
                f"choose a fraction in [{need / n:.3g}, {1 - need / n:.3g}] or use more data"
                if 2 * need <= n
                else f"no fraction does with {n}: use at least {2 * need} training images"
            )
            raise ConfigError(
                f"attack.aux_fraction {a.aux_fraction:g} of {n} training images leaves {got} to the {who} "
                f"(at least {need} on each side); {fix}"
            )
        auxiliary = stratified_indices(labels, aux_n, derived_generator(cfg.seed, "aux"), num_classes)
        victim = complement(n, auxiliary)
    initial, update = victim, None
    if a.setting == "update":
        initial, update = _update_batch(cfg, labels[victim], num_classes, victim)
    adversary = auxiliary if auxiliary is not None and not KNOWLEDGE[a.knowledge].data else initial
    holdout, fit = _holdout(cfg, labels[adversary], num_classes, adversary)
    poisoned_set = update if update is not None else victim
    poison = choose_indices(labels[poisoned_set], cfg.poison, cfg.seed)
    return Partition(n, victim, initial, adversary, holdout, fit, poison, auxiliary, update)


def _update_batch(cfg: ExperimentConfig, labels: torch.Tensor, num_classes: int, victim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(initial, update batch) of the victim's data, as indices into the training split."""
    size, n = cfg.attack.update_size, len(labels)
    need = 0 if cfg.attack.checkpoint is not None else MIN_PER_CLASS * num_classes
    if size > n - need:
        fix = "lower attack.update_size" + ("" if need == 0 else " or start from attack.checkpoint")
        leaves = f"leaves {n - size} of" if size <= n else "is more than"  # never "leaves -50"
        raise ConfigError(
            f"attack.update_size {size} {leaves} the victim's {n} images for its initial training (need at least {need}); {fix}"
        )
    batch = stratified_indices(labels, size, derived_generator(cfg.seed, "update"), num_classes)
    return victim[complement(n, batch)], victim[batch]


def _holdout(cfg: ExperimentConfig, labels: torch.Tensor, num_classes: int, adversary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hold-out, the rest) of the adversary's data, as indices into the training split."""
    n = len(labels)
    hold_n = max(num_classes, round(cfg.attack.holdout_fraction * n))
    if hold_n >= n:
        raise ConfigError(
            f"the adversary holds {n} images, too few to keep a hold-out of {hold_n} (at least one per class) "
            f"and train on the rest; use more data or a smaller attack.holdout_fraction"
        )
    hold = stratified_indices(labels, hold_n, derived_generator(cfg.seed, "holdout"), num_classes)
    return adversary[hold], adversary[complement(n, hold)]
