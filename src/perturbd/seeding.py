"""Randomness derived from the run seed: one independent generator per part of an experiment.

Every random choice of a run (the data limits, the adversary's auxiliary split, its hold-out,
the update batch, the defender's clean sample, …) draws from a generator named after its part, so
adding a part, or drawing more from one, never shifts the draws of another. Same seed, same
parts ⇒ same choices, on any machine (the generators are CPU ``torch.Generator``\\ s).
"""

from __future__ import annotations

import hashlib

import torch

# The adversary's own models start from ``seed + ADVERSARY_SEED_OFFSET``: they never share the
# victim's initial weights (a prime, so that seeds 0, 1, … of the victim and of the adversary
# do not meet within any sweep).
ADVERSARY_SEED_OFFSET = 7919


def derived_seed(seed: int, part: str, namespace: str = "attack") -> int:
    """A 63-bit seed for ``part``, from SHA-256 of ``perturbd-<namespace>:<seed>:<part>``."""
    digest = hashlib.sha256(f"perturbd-{namespace}:{seed}:{part}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def derived_generator(seed: int, part: str, namespace: str = "attack") -> torch.Generator:
    """A CPU generator for ``part``, independent of every other part (see :func:`derived_seed`)."""
    return torch.Generator().manual_seed(derived_seed(seed, part, namespace))


def complement(n: int, keep: torch.Tensor) -> torch.Tensor:
    """The sorted indices in ``range(n)`` that are not in ``keep``."""
    mask = torch.ones(n, dtype=torch.bool)
    mask[keep] = False
    return torch.nonzero(mask).flatten()
