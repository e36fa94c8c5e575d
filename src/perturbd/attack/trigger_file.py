"""``perturbd trigger make``: build a trigger as the adversary would, without training a victim,
and write it as a file other runs (``trigger.kind: image``) and tools can take."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from perturbd.attack.partition import partition
from perturbd.attack.plan import AttackPlan, plan_attack
from perturbd.config import ExperimentConfig
from perturbd.data import load_data
from perturbd.errors import ConfigError
from perturbd.poisoning import check_target
from perturbd.progress import watching
from perturbd.report.figures import trigger_png
from perturbd.runs.rundir import write_json
from perturbd.runs.twins import TwinStore
from perturbd.train import Monitor, resolve_device


def make_trigger(cfg: ExperimentConfig, monitor: Monitor | None = None, output: Path | None = None) -> AttackPlan:
    """Build the trigger of ``cfg`` as the adversary would (training or loading only its own model).

    ``output`` is checked first, so a bad file name fails before any training. ``monitor``: where
    the progress of the adversary's training and of the mask goes (default: the active one).
    """
    if output is not None and Path(output).suffix != ".safetensors":
        raise ConfigError(f"the trigger file must end in .safetensors, got '{output}'; e.g. -o mask.safetensors")
    device = resolve_device(cfg.train.device)
    split = load_data(cfg.data, cfg.seed)
    check_target(cfg.poison, split.train.num_classes)
    part = partition(cfg, split.train.labels, split.train.num_classes)
    with watching(monitor):  # the mask's passes report where the adversary's training does
        return plan_attack(cfg, split, part, device, TwinStore(monitor=monitor), monitor)


def write_trigger(plan: AttackPlan, output: Path, samples: torch.Tensor | None = None) -> list[Path]:
    """Write ``output`` (safetensors), the amplified mask beside it (``.png``; for a non-additive
    trigger, the mean change it makes to ``samples``) and what the adversary used (``.json``);
    all three are written to temporary names and renamed at the end."""
    output = Path(output).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    finals = [output, output.with_suffix(".png"), output.with_suffix(".json")]
    tmps = [p.with_name(f".tmp-{os.getpid()}-{p.name}") for p in finals]
    try:
        plan.trigger.save(tmps[0])
        trigger_png(plan.trigger.preview(samples), tmps[1], f"{plan.trigger.kind} trigger")
        write_json(tmps[2], plan.record)
        for tmp, final in zip(tmps, finals):
            os.replace(tmp, final)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return finals
