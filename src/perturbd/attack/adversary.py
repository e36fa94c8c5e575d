"""The adversary's knowledge: which model it computes an adaptive mask on, and on which images.

What each level holds is one row of :data:`perturbd.knowledge.KNOWLEDGE`; here is what it means:

| ``attack.knowledge`` | adversary's data | adversary's model |
|---|---|---|
| ``full``    | the victim's training set | the victim's model: its architecture, seed and training (the very clean model) |
| ``data``    | the victim's training set | a surrogate of another architecture trained on it |
| ``model``   | auxiliary data, disjoint  | the victim's *architecture*, retrained on the auxiliary data (another seed) |
| ``weights`` | auxiliary data, disjoint  | the victim's deployed *weights*: its clean model (the pre-update model when updating) |
| ``none``    | auxiliary data, disjoint  | a surrogate of another architecture trained on the auxiliary data |

"Knows the model" has these two readings, both named: ``model`` (the architecture) and
``weights`` (the model as deployed, e.g. downloaded before an update). A model the adversary
trains itself trains for at least ``attack.surrogate_steps`` optimiser steps (more epochs than
the victim's when its data is small), so that the mask is computed on a model that classifies:
its hold-out accuracy is in ``adversary.json``.

Which images are whose is the run's :class:`~perturbd.attack.partition.Partition`. The adversary
keeps its hold-out out of its training (except under ``full``, where its model is the victim's)
and out of the mask samples, to measure its accuracy and the mask's held-out fooling rate. It
never sees the test set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from perturbd.attack.partition import Partition, indices_hash
from perturbd.config import ExperimentConfig
from perturbd.data.dataset import ImageDataset
from perturbd.errors import ConfigError
from perturbd.knowledge import KNOWLEDGE
from perturbd.metrics import clean_accuracy
from perturbd.models import build_model, default_model_name, get_model, list_models
from perturbd.runs.twins import TwinStore
from perturbd.seeding import ADVERSARY_SEED_OFFSET
from perturbd.train import Monitor, fit

# the surrogate ``attack.surrogate: auto`` takes, first that fits and is not the victim's: on grey
# images the MNIST architectures; on colour images the CIFAR ones (lenet5, an MNIST network, is a
# weak surrogate on CIFAR-10 (JPEG): configs/paper/README.md, ``cifar10.yaml``)
SURROGATE_CANDIDATES = {
    "grey": ("lenet5", "cnn28", "cnn32", "preact_resnet18"),
    "colour": ("cnn32", "fastnet32_small", "preact_resnet18", "lenet5", "cnn28"),
}


@dataclass
class Adversary:
    """What the adversary has.

    Attributes:
        model: the model it computes masks on (eval mode, on the run's device).
        samples: its images for computing a mask (never the victim's test set).
        holdout: its images kept out of ``samples`` (and of its training unless ``full``).
        record: the ``knowledge``, ``data`` and ``model`` parts of ``adversary.json``.
    """

    model: nn.Module
    samples: ImageDataset
    holdout: ImageDataset
    record: dict[str, Any]


def resolve_arch(name: str, image_shape: tuple[int, int, int]) -> str:
    """The registry name an architecture setting means (``auto`` resolved for this image shape)."""
    return default_model_name(image_shape) if name == "auto" else name


def surrogate_arch(cfg: ExperimentConfig, victim_arch: str, image_shape: tuple[int, int, int], num_classes: int) -> str:
    """The surrogate for knowledge ``data``/``none``: ``attack.surrogate`` or the first registered
    architecture of :data:`SURROGATE_CANDIDATES` (grey or colour by the channel count) other than
    the victim's that builds for the shape."""
    if cfg.attack.surrogate != "auto":
        name = resolve_arch(cfg.attack.surrogate, image_shape)
        if name == victim_arch:
            raise ConfigError(
                f"attack.surrogate '{cfg.attack.surrogate}' is the victim's architecture, but knowledge "
                f"'{cfg.attack.knowledge}' means the adversary does not know it; pick another architecture "
                f"(see `perturbd models`) or use knowledge full/model"
            )
        get_model(name, image_shape, num_classes)  # unknown names and wrong shapes fail here, in one line
        return name
    registered = set(list_models())
    for name in SURROGATE_CANDIDATES["grey" if image_shape[0] == 1 else "colour"]:
        if name in registered and name != victim_arch:
            try:
                get_model(name, image_shape, num_classes)
            except (ConfigError, ValueError, RuntimeError):
                continue
            return name
    raise ConfigError(
        f"no registered architecture other than the victim's '{victim_arch}' fits images of shape {image_shape}; "
        f"set attack.surrogate=NAME (see `perturbd models`)"
    )


def prepare_adversary(
    cfg: ExperimentConfig, train: ImageDataset, part: Partition, device: torch.device, twins: TwinStore, monitor: Monitor | None = None
) -> Adversary:
    """Train or load the adversary's model on what it has (reads only the training split).

    Under ``full`` and ``weights`` its model *is* the victim's clean model, from ``twins`` (the
    same one the setting then uses: trained once), or the pre-update checkpoint when the update
    setting starts from one.
    """
    knowledge, knows = cfg.attack.knowledge, KNOWLEDGE[cfg.attack.knowledge]
    shape, k = train.image_shape, train.num_classes
    v_arch = resolve_arch(cfg.model.name, shape)
    adv_data = part.take(train, part.adversary)
    fit_data, holdout = part.take(train, part.fit), part.take(train, part.holdout)
    started = time.perf_counter()
    checkpoint, steps = None, None
    if knows.weights:
        arch, seed, seen = v_arch, cfg.seed, knowledge == "full"
        if cfg.attack.setting == "update" and cfg.attack.checkpoint is not None:
            model, checkpoint = twins.checkpoint(cfg, shape, k).model, str(cfg.attack.checkpoint)
        else:
            model = twins.clean_model(cfg, part.take(train, part.initial), device, description="adversary").model
        trained_on = "the victim's training set (it is the victim's clean model)"
    else:
        arch = v_arch if knows.architecture else surrogate_arch(cfg, v_arch, shape, k)
        seed, seen = cfg.seed + ADVERSARY_SEED_OFFSET, False
        model = build_model(cfg.model, shape, k, seed=seed) if arch == v_arch else get_model(arch, shape, k, seed=seed)
        per_epoch = max(1, len(fit_data) // min(cfg.train.batch_size, len(fit_data)))
        epochs = max(cfg.train.epochs, math.ceil(cfg.attack.surrogate_steps / per_epoch))
        fit(model, fit_data, cfg.train, seed, epochs=epochs, monitor=monitor, description="adversary")
        steps = epochs * per_epoch
        trained_on = f"{len(fit_data)} images of its data (holdout excluded), {epochs} epochs"
    model.to(device).eval()
    source = "the victim's training set" if knows.data else "auxiliary data held out of the victim's training set"
    record: dict[str, Any] = {
        "knowledge": knowledge,
        "setting": cfg.attack.setting,
        "data": {
            "source": source,
            "name": train.name,
            "size": len(adv_data),
            "mask_sample_pool": len(fit_data),
            "holdout_size": len(holdout),
            "indices_sha256": indices_hash(part.adversary),
            "disjoint_from_victim": not knows.data,
            "victim_train_size": len(part.victim),
            "test_set_used": False,
        },
        "model": {
            "arch": arch,
            "victim_arch": v_arch,
            "surrogate": arch != v_arch,
            "seed": seed,
            "checkpoint": checkpoint,
            "trained_on": trained_on,
            "train_steps": steps,
            "train_seconds": round(time.perf_counter() - started, 3),
            "holdout_accuracy": clean_accuracy(model, holdout),
            "holdout_seen_in_training": seen,
            "is_victim_clean_model": knows.weights and checkpoint is None,
        },
    }
    return Adversary(model, fit_data, holdout, record)
