"""Bounds on sizes a user (or a file) can ask for, checked before anything is allocated.

==================  ===================  ==============================================================
bound               value                where it is checked
==================  ===================  ==============================================================
classes             100,000              labels of npz / array data and ``perturbd.poison``, targets
                                         (``poison.target``, ``target=``): labels must be < 100,000
seeds               0 ≤ seed < 2^63      ``seed`` in a config, every ``seeds:`` of a sweep, the API
image pixels        2^26 = 67,108,864    every image file read (image folders, masks, blend images),
                                         from its header, before decoding (8192 × 8192 passes)
sweep runs          10,000               an expanded sweep (seeds × variants × axes), counted before
                                         a value is listed; ``max_runs:`` in the sweep file or
                                         ``perturbd sweep --max-runs N`` raises it
npz arrays          the data it holds,   every array of an npz data set, from its ``.npy`` header
                    the machine's        before it is read: its declared size at most the bytes the
                    memory               archive holds for it (no lying header) and the memory
YAML files          16 MiB, 100,000      every config, sweep and run folder ``config.yaml`` read: its
                    values               size, and its values counted with every alias expanded (an
                                         alias bomb), before it is built; no alias to itself
==================  ===================  ==============================================================

Every breach is a one-line :class:`~perturbd.errors.PerturbdError` naming the value and the bound.
"""

from __future__ import annotations

import operator
import os
from typing import SupportsIndex

from perturbd.errors import ConfigError, DataError

MAX_CLASSES = 100_000
SEED_LIMIT = 2**63
MAX_IMAGE_PIXELS = 2**26
MAX_SWEEP_RUNS = 10_000
MAX_YAML_BYTES = 16 * 2**20
MAX_YAML_VALUES = 100_000


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_seed(seed: object, where: str = "seed") -> int:
    """``seed`` as an int in [0, 2^63); a :class:`ConfigError` otherwise (numpy integers pass)."""
    if isinstance(seed, bool) or not isinstance(seed, SupportsIndex):
        raise ConfigError(f"{where} must be an integer in [0, 2^63 - 1], got {seed!r}")
    value = operator.index(seed)
    if not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{where} must be in [0, 2^63 - 1] = [0, {SEED_LIMIT - 1}], got {value}")
    return value


def check_label_bound(largest: int, where: str) -> None:
    """A :class:`DataError` unless a largest label ``largest`` means at most :data:`MAX_CLASSES` classes."""
    if largest >= MAX_CLASSES:
        raise DataError(
            f"{where}: label {largest} is too large: perturbd takes at most {MAX_CLASSES:,} classes (labels 0…{MAX_CLASSES - 1}); "
            f"number the classes 0…K-1"
        )


def check_target(target: object, where: str = "poison.target") -> None:
    """A :class:`ConfigError` unless ``target`` is a plausible class index (< :data:`MAX_CLASSES`)."""
    if isinstance(target, int) and not isinstance(target, bool) and target >= MAX_CLASSES:
        raise ConfigError(f"{where} must be a class index below {MAX_CLASSES:,}, got {target}")
