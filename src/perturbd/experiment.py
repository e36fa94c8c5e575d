"""One experiment, end to end: the only module that knows the whole order.

config → data → attack (knowledge → surrogate → trigger) → poison → train | update
→ evaluate (clean twin + backdoored) → defend → run directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from perturbd import settings, update  # noqa: F401  (update registers its setting and its check)
from perturbd.attack import AttackPlan, plan_attack
from perturbd.config import ExperimentConfig, dump_yaml
from perturbd.data import load_data
from perturbd.data.dataset import DataSplit
from perturbd.defenses import build_defense
from perturbd.defenses.evaluate import DefenseInputs, DefenseReport, defender_clean_set, run_defenses, write_defenses
from perturbd.defenses.saved import CLEAN_SOURCE
from perturbd.errors import DataError
from perturbd.metrics import attack_success_rate, clean_accuracy, stealth
from perturbd.models import get_model, save_model
from perturbd.poison import check_target
from perturbd.report.figures import samples_png, trigger_png
from perturbd.rundir import atomic_dir, environment, made_elsewhere, read_json, write_json
from perturbd.settings import Context, Log, Trained
from perturbd.train import Monitor, SilentMonitor, resolve_device
from perturbd.triggers import get_trigger

@dataclass
class RunResult:
    """A finished run: its directory, metrics and whether it was already there (``stale``: if
    so and another perturbd version or commit made it, the line that says which)."""

    run_dir: Path
    metrics: dict[str, Any]
    skipped: bool = False
    stale: str | None = None


def run_dir_for(cfg: ExperimentConfig, out: Path) -> Path:
    return Path(out).expanduser() / f"{cfg.run_name}-{cfg.hash()}"


def evaluate(cfg: ExperimentConfig, split: DataSplit, plan: AttackPlan, trained: Trained) -> dict[str, Any]:
    """The metrics table of DESIGN.md for the backdoored model and its clean twin."""
    target = cfg.poison.target
    acc = clean_accuracy(trained.backdoored, split.test)
    twin_acc = clean_accuracy(trained.clean, split.test)
    p = trained.poisoned
    return {
        "config_hash": cfg.hash(),
        "seed": cfg.seed,
        "setting": cfg.attack.setting,
        "knowledge": cfg.attack.knowledge,
        "target": target,
        "clean_accuracy": acc,
        "clean_twin_accuracy": twin_acc,
        "accuracy_loss": twin_acc - acc,
        "attack_success_rate": attack_success_rate(trained.backdoored, split.test, plan.trigger, target),
        "clean_model_asr": attack_success_rate(trained.clean, split.test, plan.trigger, target),
        "injection_rate": p.injection_rate,
        "poisoned_count": len(p.indices),
        "poison_set_size": len(p.dataset),
        "test_size": len(split.test),
        "trigger": {"kind": plan.trigger.kind, **plan.trigger.norms()},
        "stealth": stealth(p.clean_images, p.poisoned_images),
        **trained.metrics,
    }


def preflight(cfg: ExperimentConfig) -> tuple[torch.device, settings.Setting, DataSplit]:
    """Check every name and value that can be checked before any work, and load the data.

    A mistake found here leaves no output at all (not even a log line)."""
    device = resolve_device(cfg.train.device)
    setting = settings.get_setting(cfg.attack.setting)
    get_trigger(cfg.trigger.kind)
    split = load_data(cfg.data, cfg.seed)
    check_target(cfg.poison, split.train.num_classes)
    if not bool((split.test.labels != cfg.poison.target).any()):
        raise DataError(f"the test set has no image outside the target class {cfg.poison.target}; ASR is undefined: use other test data")
    get_model(cfg.model.name, split.train.image_shape, split.train.num_classes)
    settings.check_setting(cfg, split)
    for spec in cfg.defenses:
        build_defense(spec.name, **spec.params)
    return device, setting, split


def defend(cfg: ExperimentConfig, split: DataSplit, plan: AttackPlan, trained: Trained, log: Log) -> list[DefenseReport]:
    """Run ``cfg.defenses`` on the backdoored model (the clean twin as baseline). The defender's
    clean images are the poisoned set's clean images (see :data:`~perturbd.defenses.saved.CLEAN_SOURCE`),
    never the test images the defences are measured on."""
    if not cfg.defenses:
        return []
    p = trained.poisoned
    clean = defender_clean_set(p.dataset, p.indices, cfg.seed)
    inputs = DefenseInputs(trained.backdoored, split.test, clean, CLEAN_SOURCE, p.dataset, p.indices, plan.trigger, cfg.poison.target, trained.clean)
    return run_defenses(cfg.defenses, inputs, log=log)


def run(
    cfg: ExperimentConfig,
    out: Path = Path("runs"),
    *,
    monitor: Monitor | None = None,
    log: Log | None = None,
    force: bool = False,
    twin_cache: Path | None = None,
) -> RunResult:
    """Run one experiment and write its run directory; return the existing one if complete.

    ``twin_cache``: a folder where clean twins are shared between runs (see :mod:`perturbd.twins`).

    Example:
        >>> from perturbd import load_config, run
        >>> result = run(load_config(overrides=["train.epochs=2"]))  # doctest: +SKIP
        >>> result.metrics["attack_success_rate"]  # doctest: +SKIP
    """
    final = run_dir_for(cfg, out)
    if final.is_dir() and not force:
        stale = made_elsewhere(final)
        if stale and log:
            log(stale)
        return RunResult(final, read_json(final / "metrics.json"), skipped=True, stale=stale)
    lines: list[str] = []

    def say(msg: str) -> None:
        lines.append(f"[{time.strftime('%H:%M:%S')}] {msg}")
        if log:
            log(msg)

    started = time.perf_counter()
    device, setting, split = preflight(cfg)
    plan = plan_attack(cfg, split, device, monitor)
    say(f"data {split.train.name}: {len(split.train)} train, {len(split.test)} test, shape {split.train.image_shape}; device {device}")
    say(f"trigger {plan.trigger.kind}: L∞ {plan.trigger.norms()['linf']:.1f}, L2 {plan.trigger.norms()['l2']:.1f} (pixel units)")
    ctx = Context(cfg, split, plan, device, monitor or SilentMonitor(), say, twin_cache)
    trained = setting(ctx)
    metrics = evaluate(cfg, split, plan, trained)
    say(
        f"clean accuracy {metrics['clean_accuracy']:.4f} (twin {metrics['clean_twin_accuracy']:.4f}), "
        f"ASR {metrics['attack_success_rate']:.4f} (clean model {metrics['clean_model_asr']:.4f})"
    )
    defended = time.perf_counter()
    reports = defend(cfg, split, plan, trained, say)
    if reports:
        metrics["defenses"] = {r.name: r.cell for r in reports}
    timing = {**trained.seconds, "defenses": time.perf_counter() - defended, "total": time.perf_counter() - started}
    with atomic_dir(final, replace=force) as tmp:
        write_run(tmp, cfg, plan, trained, metrics, timing, str(device), lines, reports)
    return RunResult(final, metrics)


def write_run(
    folder: Path,
    cfg: ExperimentConfig,
    plan: AttackPlan,
    trained: Trained,
    metrics: dict[str, Any],
    timing: dict[str, float],
    device: str,
    lines: list[str],
    reports: list[DefenseReport] | None = None,
) -> None:
    """Write every file of a run directory into ``folder`` (with ``defenses.json``, their figures
    and the one-row ``matrix.md`` / ``matrix.csv`` when defences ran)."""
    (folder / "config.yaml").write_text(dump_yaml(cfg))
    write_json(folder / "metrics.json", metrics)
    write_json(folder / "adversary.json", plan.info)
    write_json(folder / "timing.json", timing)
    write_json(folder / "environment.json", environment(device))
    p = trained.poisoned
    write_json(folder / "poison_indices.json", {"indices": p.indices.tolist(), "original_labels": p.original_labels.tolist(), "target": cfg.poison.target})
    plan.trigger.save(folder / "trigger.safetensors")
    trigger_png(plan.trigger.delta, folder / "trigger.png", f"{plan.trigger.kind} trigger")
    samples_png(p.clean_images, p.poisoned_images, folder / "samples.png")
    meta = {"config_hash": cfg.hash(), "seed": str(cfg.seed)}
    save_model(trained.backdoored, folder / "model.safetensors", meta)
    save_model(trained.clean, folder / "clean_model.safetensors", meta)
    if reports:
        from perturbd.report.matrix import matrix_rows, write_matrix

        write_defenses(folder, reports, CLEAN_SOURCE)
        write_matrix(matrix_rows([folder]), folder)
    (folder / "log.txt").write_text("\n".join(lines) + "\n")
