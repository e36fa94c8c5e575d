"""The adversary's knowledge: which data and which model it computes an adaptive mask on.

| ``attack.knowledge`` | adversary's data | adversary's model |
|---|---|---|
| ``full``  | the victim's training set | the victim's model: its architecture, seed and training (the very clean model) |
| ``data``  | the victim's training set | a surrogate of another architecture trained on it |
| ``model`` | auxiliary data, disjoint  | the victim's architecture trained on the auxiliary data (another seed) |
| ``none``  | auxiliary data, disjoint  | a surrogate of another architecture trained on the auxiliary data |

Auxiliary data is a seeded stratified ``attack.aux_fraction`` of the training split that the
victim then does *not* train on (:func:`victim_and_aux`). The adversary keeps a stratified
``attack.holdout_fraction`` of its own data out of its training (except under ``full``, where its
model is the victim's) and out of the mask samples, to measure its accuracy and the mask's
held-out fooling rate. It never sees the test set.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from perturbd.config import ExperimentConfig
from perturbd.data.dataset import DataSplit, ImageDataset
from perturbd.data.sources import stratified_indices
from perturbd.errors import ConfigError
from perturbd.metrics import clean_accuracy
from perturbd.train import Monitor, fit
from perturbd.triggers import Trigger, TriggerContext, build_trigger

if TYPE_CHECKING:
    from perturbd.attack import AttackPlan

VICTIM_DATA = {"full": True, "data": True, "model": False, "none": False}
VICTIM_ARCH = {"full": True, "data": False, "model": True, "none": False}
SURROGATE_CANDIDATES = ("lenet5", "cnn28", "cnn32", "preact_resnet18")
MIN_PER_CLASS = 5  # images per class the adversary and the victim must each keep, at least
ADVERSARY_SEED_OFFSET = 7919  # the adversary's own models do not share the victim's initial weights


def derived_generator(seed: int, part: str) -> torch.Generator:
    """A CPU generator for ``part`` of the attack, independent of the other parts and of the data limits."""
    digest = hashlib.sha256(f"perturbd-attack:{seed}:{part}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def indices_hash(indices: torch.Tensor) -> str:
    """SHA-256 (first 16 hex digits) of sorted int64 indices: names a subset in ``adversary.json``."""
    return hashlib.sha256(indices.sort().values.to(torch.int64).numpy().tobytes()).hexdigest()[:16]


def _complement(n: int, keep: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[keep] = False
    return torch.nonzero(mask).flatten()


def victim_and_aux(cfg: ExperimentConfig, train: ImageDataset) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Indices into ``train`` of the victim's pool and of the adversary's auxiliary data.

    Under ``model``/``none`` a seeded stratified ``aux_fraction`` goes to the adversary and the
    victim keeps the rest (disjoint); under ``full``/``data`` the victim keeps everything and the
    auxiliary part is ``None``.
    """
    n = len(train)
    if VICTIM_DATA[cfg.attack.knowledge]:
        return torch.arange(n), None
    need = MIN_PER_CLASS * train.num_classes
    aux_n = int(round(cfg.attack.aux_fraction * n))
    if aux_n < need or n - aux_n < need:
        who, got = ("adversary", aux_n) if aux_n < need else ("victim", n - aux_n)
        raise ConfigError(
            f"attack.aux_fraction {cfg.attack.aux_fraction:g} of {n} training images leaves {got} to the {who} "
            f"(knowledge '{cfg.attack.knowledge}' needs at least {need} on each side); choose a fraction in "
            f"[{need / n:.3g}, {1 - need / n:.3g}] or use more data"
        )
    aux = stratified_indices(train.labels, aux_n, derived_generator(cfg.seed, "aux"), train.num_classes)
    return _complement(n, aux), aux


def victim_train(cfg: ExperimentConfig, split: DataSplit) -> ImageDataset:
    """The data the victim trains on (the training split less any auxiliary data)."""
    pool, _ = victim_and_aux(cfg, split.train)
    return split.train if pool.numel() == len(split.train) else split.train.subset(pool)


def resolve_arch(name: str, image_shape: tuple[int, int, int], num_classes: int) -> str:
    """The registry name an architecture setting means (``auto`` resolved for this image shape)."""
    if name != "auto":
        return name
    from perturbd.models import default_model_name

    return default_model_name(image_shape)


def surrogate_arch(cfg: ExperimentConfig, victim_arch: str, image_shape: tuple[int, int, int], num_classes: int) -> str:
    """The surrogate for knowledge ``data``/``none``: ``attack.surrogate`` or the first registered
    architecture of :data:`SURROGATE_CANDIDATES` other than the victim's that builds for the shape."""
    from perturbd.models import get_model, list_models

    if cfg.attack.surrogate != "auto":
        name = resolve_arch(cfg.attack.surrogate, image_shape, num_classes)
        if name == victim_arch:
            raise ConfigError(
                f"attack.surrogate '{cfg.attack.surrogate}' is the victim's architecture, but knowledge "
                f"'{cfg.attack.knowledge}' means the adversary does not know it; pick another architecture "
                f"(see `perturbd models`) or use knowledge full/model"
            )
        get_model(name, image_shape, num_classes)  # unknown names and wrong shapes fail here, in one line
        return name
    registered = set(list_models())
    for name in SURROGATE_CANDIDATES:
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


def _new(name: str, image_shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    from perturbd.models import get_model

    torch.manual_seed(seed)
    return get_model(name, image_shape, num_classes)


def victim_initial(cfg: ExperimentConfig, pool: ImageDataset) -> torch.Tensor:
    """Indices into ``pool`` of what the victim's clean model is trained on: all of it, less the
    update batch under the update setting."""
    if cfg.attack.setting != "update":
        return torch.arange(len(pool))
    from perturbd.update import split_update

    initial, _ = split_update(pool, cfg)
    return initial


@dataclass
class Adversary:
    """What the adversary has: its model, its own data (mask samples and held-out images), facts.

    Attributes:
        model: the model it computes masks on (eval mode).
        samples: its images for computing a mask (never the victim's test set).
        holdout: its images kept out of ``samples`` (and of its training unless ``full``).
        victim_train: the data the victim trains on.
        info: the ``data`` and ``model`` parts of ``adversary.json``.
        clean_model: under ``full``, ``model`` itself, which is the victim's clean model.
    """

    model: nn.Module
    samples: ImageDataset
    holdout: ImageDataset
    victim_train: ImageDataset
    info: dict[str, Any]
    clean_model: nn.Module | None = None


def prepare_adversary(cfg: ExperimentConfig, train: ImageDataset, device: torch.device, monitor: Monitor | None = None) -> Adversary:
    """Split the data by knowledge, then train or load the adversary's model on what it has.

    Reads only the training split. Under ``full`` the adversary's model *is* the victim's clean
    model (same seed, architecture, data and training), returned as ``clean_model``.
    """
    from perturbd.triggers.adaptive import check_budget

    check_budget(cfg.trigger.norm, cfg.trigger.budget)  # fail before any training
    knowledge = cfg.attack.knowledge
    shape, k = train.image_shape, train.num_classes
    pool_idx, aux_idx = victim_and_aux(cfg, train)
    pool = train if aux_idx is None else train.subset(pool_idx)
    v_arch = resolve_arch(cfg.model.name, shape, k)
    if cfg.attack.setting == "update":  # the update setting's mistakes, before any training too
        from perturbd.update import load_checkpoint, split_update

        split_update(pool, cfg)
        if cfg.attack.checkpoint is not None:
            load_checkpoint(cfg, shape, k)

    if VICTIM_DATA[knowledge]:
        adv_idx, source = pool_idx[victim_initial(cfg, pool)], "the victim's training set"
    else:
        assert aux_idx is not None
        adv_idx, source = aux_idx, "auxiliary data held out of the victim's training set"
        assert not bool(torch.isin(aux_idx, pool_idx).any()), "auxiliary data must be disjoint from the victim's"
    adv_data = train if len(adv_idx) == len(train) else train.subset(adv_idx)
    hold_n = max(k, int(round(cfg.attack.holdout_fraction * len(adv_data))))
    hold_idx = stratified_indices(adv_data.labels, hold_n, derived_generator(cfg.seed, "holdout"), k)
    holdout, fit_data = adv_data.subset(hold_idx), adv_data.subset(_complement(len(adv_data), hold_idx))

    started = time.perf_counter()
    clean_model: nn.Module | None = None
    checkpoint = None
    if knowledge == "full":
        arch, seed = v_arch, cfg.seed
        if cfg.attack.setting == "update" and cfg.attack.checkpoint is not None:
            from perturbd.update import load_checkpoint

            model, checkpoint = load_checkpoint(cfg, shape, k), str(cfg.attack.checkpoint)
        else:
            model = _new(cfg.model.name, shape, k, seed)
            fit(model, adv_data, cfg.train, seed, monitor=monitor, description="adversary")
            clean_model = model
        trained_on, seen = "the victim's training set (it is the victim's clean model)", True
    else:
        arch = v_arch if VICTIM_ARCH[knowledge] else surrogate_arch(cfg, v_arch, shape, k)
        seed = cfg.seed + ADVERSARY_SEED_OFFSET
        model = _new(arch, shape, k, seed)
        fit(model, fit_data, cfg.train, seed, monitor=monitor, description="adversary")
        trained_on, seen = f"{len(fit_data)} images of its data (holdout excluded)", False
    model.to(device).eval()
    info: dict[str, Any] = {
        "knowledge": knowledge,
        "setting": cfg.attack.setting,
        "data": {
            "source": source,
            "name": train.name,
            "size": len(adv_data),
            "mask_sample_pool": len(fit_data),
            "holdout_size": len(holdout),
            "indices_sha256": indices_hash(adv_idx),
            "disjoint_from_victim": aux_idx is not None,
            "victim_train_size": len(pool),
            "test_set_used": False,
        },
        "model": {
            "arch": arch,
            "victim_arch": v_arch,
            "surrogate": arch != v_arch,
            "seed": seed,
            "checkpoint": checkpoint,
            "trained_on": trained_on,
            "train_seconds": round(time.perf_counter() - started, 3),
            "holdout_accuracy": clean_accuracy(model, holdout),
            "holdout_seen_in_training": seen,
            "is_victim_clean_model": clean_model is not None,
        },
    }
    return Adversary(model, fit_data, holdout, pool, info, clean_model)


def adaptive_trigger(cfg: ExperimentConfig, adversary: Adversary, device: torch.device) -> Trigger:
    """The mask ``cfg.trigger`` computed on the adversary's model and samples."""
    shape = adversary.samples.image_shape
    ctx = TriggerContext(shape, cfg.seed, cfg.poison.target, adversary.model, adversary.samples, adversary.holdout, device)
    return build_trigger(cfg.trigger, ctx)


def plan_adaptive(cfg: ExperimentConfig, split: DataSplit, ctx: TriggerContext, monitor: Monitor | None = None) -> AttackPlan:
    """Train or load the adversary's model on the data it has, then compute the mask on it.

    Reads only ``split.train`` (see :func:`prepare_adversary`).
    """
    from perturbd.attack import AttackPlan

    adversary = prepare_adversary(cfg, split.train, ctx.device, monitor)
    trigger = adaptive_trigger(cfg, adversary, ctx.device)
    info = {**adversary.info, "trigger": trigger.info}
    return AttackPlan(trigger, adversary.victim_train, info, clean_model=adversary.clean_model)


def make_trigger(cfg: ExperimentConfig, monitor: Monitor | None = None, output: Path | None = None) -> AttackPlan:
    """Build the trigger of ``cfg`` as the adversary would (training or loading only its own model).

    Used by ``perturbd trigger make``: no victim is trained. ``output`` is checked first, so a bad
    file name fails before any training.
    """
    from perturbd.attack import plan_attack
    from perturbd.data import load_data
    from perturbd.poison import check_target
    from perturbd.train import resolve_device

    if output is not None and Path(output).suffix != ".safetensors":
        raise ConfigError(f"the trigger file must end in .safetensors, got '{output}'; e.g. -o mask.safetensors")
    device = resolve_device(cfg.train.device)
    split = load_data(cfg.data, cfg.seed)
    check_target(cfg.poison, split.train.num_classes)
    return plan_attack(cfg, split, device, monitor)


def write_trigger(plan: AttackPlan, output: Path) -> list[Path]:
    """Write ``output`` (safetensors), the amplified mask beside it (``.png``) and what the adversary
    used (``.json``); all three are written to temporary names and renamed at the end."""
    from perturbd.report.figures import trigger_png
    from perturbd.rundir import write_json

    output = Path(output).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    finals = [output, output.with_suffix(".png"), output.with_suffix(".json")]
    tmps = [p.with_name(f".tmp-{os.getpid()}-{p.name}") for p in finals]
    try:
        plan.trigger.save(tmps[0])
        trigger_png(plan.trigger.delta, tmps[1], f"{plan.trigger.kind} trigger")
        write_json(tmps[2], plan.info)
        for tmp, final in zip(tmps, finals):
            os.replace(tmp, final)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return finals
