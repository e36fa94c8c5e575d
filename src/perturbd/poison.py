"""Choose which training images to poison, apply the trigger, relabel them to the target.

The injection rate is relative to the set the poison is injected into (the whole training set
before training, the update batch when updating): ``n = round(rate × len(set))``. Only images
whose label is not the target (and, if given, is one of the source classes) are eligible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perturbd.config import PoisonConfig
from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.errors import ConfigError
from perturbd.metrics import attacked
from perturbd.triggers import Trigger


@dataclass(frozen=True)
class PoisonedSet:
    """A training set with some images replaced by triggered copies relabelled to the target.

    Attributes:
        dataset: the poisoned training set (a new object; the clean set is untouched).
        indices: sorted int64 positions of the poisoned images in ``dataset``.
        clean_images: the original images at ``indices`` (uint8), for stealth metrics.
        poisoned_images: the images at ``indices`` as injected.
        original_labels: the labels the poisoned images had before relabelling.
    """

    dataset: ImageDataset
    indices: torch.Tensor
    clean_images: torch.Tensor
    poisoned_images: torch.Tensor
    original_labels: torch.Tensor

    @property
    def injection_rate(self) -> float:
        return len(self.indices) / len(self.dataset)


def check_target(cfg: PoisonConfig, num_classes: int) -> None:
    """Validate the target label and source classes against the data set's classes."""
    if cfg.target >= num_classes:
        raise ConfigError(f"poison.target must be in [0, {num_classes - 1}], got {cfg.target}")
    if cfg.sources != "all":
        bad = [s for s in cfg.sources if not 0 <= s < num_classes]
        if bad:
            raise ConfigError(f"poison.sources must be labels in [0, {num_classes - 1}], got {bad}")
        if cfg.sources == [cfg.target] or not [s for s in cfg.sources if s != cfg.target]:
            raise ConfigError(f"poison.sources {cfg.sources} has no class other than the target {cfg.target}")


def sources_of(cfg: PoisonConfig) -> list[int] | None:
    """The source classes of a source-specific attack; None when every class is a source."""
    return None if cfg.sources == "all" else list(cfg.sources)


def eligible_mask(labels: torch.Tensor, cfg: PoisonConfig) -> torch.Tensor:
    """Boolean mask of images that may be poisoned: not the target, and in the sources."""
    return attacked(labels, cfg.target, sources_of(cfg))


def poison_count(size: int, rate: float) -> int:
    """``round(rate × size)``; the number of images poisoned in a set of ``size``."""
    return int(round(rate * size))


def choose_indices(labels: torch.Tensor, cfg: PoisonConfig, seed: int) -> torch.Tensor:
    """Seeded choice of ``round(rate × N)`` eligible indices, sorted."""
    count = poison_count(len(labels), cfg.rate)
    if count < 1:
        raise ConfigError(
            f"poison.rate {cfg.rate} of {len(labels)} images poisons no image; "
            f"use a rate of at least {1 / len(labels):.2g}"
        )
    candidates = torch.nonzero(eligible_mask(labels, cfg)).flatten()
    if count > len(candidates):
        raise ConfigError(
            f"poison.rate {cfg.rate} asks for {count} poisoned images but only {len(candidates)} "
            f"images are not of the target class {cfg.target}; lower poison.rate"
        )
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(candidates), generator=gen)[:count]
    return candidates[pick].sort().values


def poison_dataset(data: ImageDataset, trigger: Trigger, cfg: PoisonConfig, seed: int, indices: torch.Tensor | None = None) -> PoisonedSet:
    """Apply ``trigger`` to the chosen images and relabel them to ``cfg.target``.

    ``indices``: the positions to poison, already chosen (a run's
    :class:`~perturbd.attack.partition.Partition` chooses them once); default: :func:`choose_indices`.
    A quantized trigger (:attr:`Trigger.quantize`, from ``poison.quantize``, the default) leaves
    poisoned images uint8, as an image file would; an unquantized one returns the whole set as
    float32 in [0, 1] with the poison not rounded — as the trigger is applied at test time too.
    """
    check_target(cfg, data.num_classes)
    if trigger.quantize != cfg.quantize:
        raise ConfigError(f"poison.quantize is {cfg.quantize} but the trigger is applied with quantize={trigger.quantize}; build it with the same setting")
    indices = choose_indices(data.labels, cfg, seed) if indices is None else indices
    clean = data.images[indices]
    images = data.images.clone() if trigger.quantize else to_float01(data.images)
    poisoned = trigger.apply(images[indices])
    images[indices] = poisoned
    labels = data.labels.clone()
    original = labels[indices].clone()
    labels[indices] = cfg.target
    out = ImageDataset(images, labels, data.classes, f"{data.name}+poison")
    return PoisonedSet(out, indices, clean, poisoned, original)
