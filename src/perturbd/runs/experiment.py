"""One experiment, end to end: the only module that knows the whole order.

config → data → partition → attack (knowledge → surrogate → trigger) → setting (poison → train |
update) → evaluate (clean twin + backdoored) → defend → run directory.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from perturbd.attack import AttackPlan, Partition, partition, plan_attack
from perturbd.attack.settings import Context, Setting, Trained, get_setting
from perturbd.config import ExperimentConfig
from perturbd.data import get_source, load_data, source_status
from perturbd.data.arrays import register_arrays
from perturbd.data.dataset import DataSplit
from perturbd.defenses import build_defense
from perturbd.errors import ConfigError, DataError
from perturbd.evaluation import DefenseInputs, DefenseReport, defender_clean_set, run_defenses, write_defenses
from perturbd.malloc import malloc_state
from perturbd.metrics import attack_success_rate, attacked, clean_accuracy, non_source_rate, stealth
from perturbd.models import build_model, list_models, model_section, save_model
from perturbd.models.external import check_spec
from perturbd.poisoning import check_target, sources_of
from perturbd.progress import Log, current, watching
from perturbd.provenance import code_identity, cpu_name
from perturbd.registry import suggest
from perturbd.report.figures import samples_png, trigger_png
from perturbd.report.matrix import matrix_rows, write_matrix
from perturbd.runs.folder import RunDir
from perturbd.runs.results import PoisonRecord, RunMetrics, Stealth, TriggerNorms
from perturbd.runs.rundir import atomic_dir, check_output, run_dir_for, run_lock
from perturbd.runs.saved import CLEAN_SOURCE
from perturbd.runs.twins import TwinStore
from perturbd.train import Monitor, resolve_device
from perturbd.triggers import get_trigger


@dataclass
class RunResult:
    """A finished run: its directory, metrics and whether it was already there (``stale``: if
    so and another perturbd version or commit made it, the line that says which)."""

    run_dir: Path
    metrics: RunMetrics
    skipped: bool = False
    stale: str | None = None


@dataclass
class Prepared:
    """What :func:`preflight` checked and loaded: everything a run needs before any training."""

    device: torch.device
    setting: Setting
    split: DataSplit
    part: Partition
    twins: TwinStore


def check_config(cfg: ExperimentConfig) -> None:
    """Check every name ``cfg`` refers to without loading anything (sweeps check each config
    this way before the first run): data source present, trigger, model, setting, defences."""
    get_source(cfg.data.name)
    state = source_status(cfg.data.name, Path(cfg.data.root).expanduser())
    if state.startswith("missing") and not cfg.data.download:
        raise ConfigError(f"data '{cfg.data.name}' (root {cfg.data.root}): {state}")
    get_trigger(cfg.trigger.kind)
    if cfg.model.name != "auto" and ":" not in cfg.model.name and cfg.model.name not in list_models():
        raise ConfigError(f"unknown model '{cfg.model.name}'{suggest(cfg.model.name, list_models())}")
    check_spec(cfg.model)
    get_setting(cfg.attack.setting)
    for spec in cfg.defenses:
        kind = build_defense(spec.name, **spec.params).kind
        if kind == "update" and cfg.attack.setting != "update":
            raise ConfigError(f"defense '{spec.name}' audits a model update: it needs attack.setting=update, got '{cfg.attack.setting}'")
        if kind == "training" and cfg.attack.setting != "before_training":
            raise ConfigError(
                f"defense '{spec.name}' trains the victim from scratch on the poisoned set: it needs attack.setting=before_training, "
                f"got '{cfg.attack.setting}'"
            )


def preflight(cfg: ExperimentConfig, twins: TwinStore | None = None) -> Prepared:
    """Check every name and value that can be checked before any work, load the data and
    partition it. A mistake found here leaves no output at all (not even a log line)."""
    device = resolve_device(cfg.train.device)
    check_config(cfg)
    setting = get_setting(cfg.attack.setting)
    split = load_data(cfg.data, cfg.seed)
    train = split.train
    check_target(cfg.poison, train.num_classes)
    if not bool(attacked(split.test.labels, cfg.poison.target, sources_of(cfg.poison)).any()):
        t = cfg.poison.target
        where = (
            f"outside the target class {t}" if cfg.poison.sources == "all" else f"of the source classes {cfg.poison.sources} (target {t})"
        )
        raise DataError(f"the test set has no image {where}; ASR is undefined: use other test data")
    build_model(cfg.model, train.image_shape, train.num_classes)
    part = partition(cfg, train.labels, train.num_classes)
    twins = twins or TwinStore()
    setting.check(cfg, split, part, twins)
    return Prepared(device, setting, split, part, twins)


def evaluate(cfg: ExperimentConfig, split: DataSplit, plan: AttackPlan, trained: Trained) -> RunMetrics:
    """The metrics table of DESIGN.md for the backdoored model and its clean twin."""
    target, sources, precision = cfg.poison.target, sources_of(cfg.poison), cfg.train.precision
    acc = clean_accuracy(trained.backdoored, split.test, precision)
    twin_acc = clean_accuracy(trained.clean, split.test, precision)
    p = trained.poisoned
    others = {}
    if sources is not None:
        others = {
            "sources": sources,
            "non_source_asr": non_source_rate(trained.backdoored, split.test, plan.trigger, target, sources, precision),
            "clean_model_non_source_asr": non_source_rate(trained.clean, split.test, plan.trigger, target, sources, precision),
        }
    return RunMetrics(
        config_hash=cfg.hash(),
        seed=cfg.seed,
        setting=cfg.attack.setting,
        knowledge=cfg.attack.knowledge,
        target=target,
        clean_accuracy=acc,
        clean_twin_accuracy=twin_acc,
        accuracy_loss=twin_acc - acc,
        attack_success_rate=attack_success_rate(trained.backdoored, split.test, plan.trigger, target, sources, precision),
        clean_model_asr=attack_success_rate(trained.clean, split.test, plan.trigger, target, sources, precision),
        injection_rate=p.injection_rate,
        poisoned_count=len(p.indices),
        poison_set_size=len(p.dataset),
        test_size=len(split.test),
        trigger=TriggerNorms(kind=plan.trigger.kind, **plan.trigger.norms(split.test.image_shape[0], p.clean_images)),
        stealth=Stealth(**stealth(p.clean_images, p.poisoned_images)),
        **others,
        **trained.facts,
    )


def defend(cfg: ExperimentConfig, split: DataSplit, plan: AttackPlan, trained: Trained, log: Log) -> list[DefenseReport]:
    """Run ``cfg.defenses`` on the backdoored model (the clean twin as baseline). The defender's
    clean images are the poisoned set's images the attacker did not touch (neither poisoned nor
    wanet's noise-mode images; see :data:`~perturbd.runs.saved.CLEAN_SOURCE`), never the test
    images the defences are measured on. A source-specific attack's sources go with them: every
    ASR a defence reports counts those classes only, as the run's. A training-time defence trains
    its own victim from the backdoored model's initial weights (the same seed) with the run's recipe."""
    if not cfg.defenses:
        return []
    p, sources = trained.poisoned, sources_of(cfg.poison)
    clean = defender_clean_set(p.dataset, p.indices, cfg.seed, p.noise_indices)
    inputs = DefenseInputs(
        trained.backdoored,
        split.test,
        clean,
        CLEAN_SOURCE,
        p.dataset,
        p.indices,
        plan.trigger,
        cfg.poison.target,
        trained.clean,
        before_model=trained.before,
        seed=cfg.seed,
        sources=None if sources is None else tuple(sources),
        initial_model=lambda: build_model(cfg.model, split.train.image_shape, split.train.num_classes, seed=cfg.seed),
        train_config=cfg.train,
    )
    return run_defenses(cfg.defenses, inputs, log=log)


def run(
    cfg: ExperimentConfig,
    out: Path = Path("runs"),
    *,
    monitor: Monitor | None = None,
    log: Log | None = None,
    force: bool = False,
    twin_cache: Path | None = None,
    model: Callable[..., nn.Module] | nn.Module | None = None,
    data: Sequence[Any] | None = None,
) -> RunResult:
    """Run one experiment and write its run directory; return the existing one if complete.

    ``monitor``: where the progress of its trainings, mask and defences goes (default: the active
    monitor, :func:`perturbd.progress.current`).
    ``twin_cache``: a folder where clean models are shared between runs (see :mod:`perturbd.runs.twins`).
    ``model``, ``data``: your own model factory and arrays (see :func:`with_inputs`).

    Example:
        >>> from perturbd import load_config, run
        >>> result = run(load_config(overrides=["train.epochs=2"]))  # doctest: +SKIP
        >>> result.metrics.attack_success_rate  # doctest: +SKIP
    """
    cfg = with_inputs(cfg, model, data)
    final = run_dir_for(cfg, out)
    try:
        complete = final.is_dir()
    except OSError:  # a name too long: check_output says so below
        complete = False
    if complete and not force:
        done = RunDir(final)
        stale = done.made_elsewhere()
        if stale and log:
            log(stale)
        return RunResult(final, done.metrics(), skipped=True, stale=stale)
    lines: list[str] = []

    def say(msg: str) -> None:
        lines.append(f"[{time.strftime('%H:%M:%S')}] {msg}")
        if log:
            log(msg)

    check_output(out, "--out", final.name)
    started = time.perf_counter()
    stages = Stopwatch()
    monitor = monitor if monitor is not None else current()
    ready = preflight(cfg, TwinStore(twin_cache, monitor))
    with run_lock(final, log) as waited, watching(monitor):  # the defences' stages report to the run's monitor too
        if final.is_dir() and (waited or not force):  # another process made it as this one waited
            if log:
                log(f"{final} was made by another process meanwhile; not made again")
            return RunResult(final, RunDir(final).metrics(), skipped=True)
        return _make(cfg, final, force, ready, stages, started, monitor, lines, say)


def _make(
    cfg: ExperimentConfig,
    final: Path,
    force: bool,
    ready: Prepared,
    stages: Stopwatch,
    started: float,
    monitor: Monitor,
    lines: list[str],
    say: Callable[[str], None],
) -> RunResult:
    """Train, evaluate and defend the run of ``cfg`` and write it to ``final`` (under its lock)."""
    split = ready.split
    stages.lap("data")
    plan = plan_attack(cfg, split, ready.part, ready.device, ready.twins, monitor)
    norms = plan.trigger.norms(split.train.image_shape[0], split.train.images[:1000])
    say(
        f"data {split.train.name}: {len(split.train)} train, {len(split.test)} test, shape {split.train.image_shape}; device {ready.device}"
    )
    measured = "" if plan.trigger.additive else ", the largest change to 1,000 training images"
    say(f"trigger {plan.trigger.kind}: L∞ {norms['linf']:.1f}, L2 {norms['l2']:.1f} (pixel units{measured})")
    stages.lap("trigger")
    trained = ready.setting.train(Context(cfg, split, ready.part, plan, ready.device, ready.twins, monitor, say))
    stages.lap("poison", excluding=sum(trained.seconds.values()))
    metrics = evaluate(cfg, split, plan, trained)
    stages.lap("evaluate")
    say(
        f"clean accuracy {metrics.clean_accuracy:.4f} (twin {metrics.clean_twin_accuracy:.4f}), "
        f"ASR {metrics.attack_success_rate:.4f} (clean model {metrics.clean_model_asr:.4f})"
    )
    reports = defend(cfg, split, plan, trained, say)
    if reports:
        metrics = metrics.model_copy(update={"defenses": {r.name: r.cell for r in reports}})
    stages.lap("defenses")
    with atomic_dir(final, replace=force) as tmp:
        write_run(tmp, cfg, plan, trained, metrics, str(ready.device), lines, reports)
        stages.lap("write")
        RunDir(tmp).write_timing({**trained.seconds, **stages.seconds, "total": time.perf_counter() - started})
    return RunResult(final, metrics)


class Stopwatch:
    """Seconds per stage of a run, for ``timing.json``: :meth:`lap` closes the stage that ran
    since the previous lap (or since the watch was made), less ``excluding`` seconds timed
    under their own names (the setting's trainings, in ``Trained.seconds``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str, excluding: float = 0.0) -> None:
        now = time.perf_counter()
        self.seconds[stage] = max(now - self._last - excluding, 0.0)
        self._last = now


def with_inputs(
    cfg: ExperimentConfig, model: Callable[..., nn.Module] | nn.Module | None = None, data: Sequence[Any] | None = None
) -> ExperimentConfig:
    """``cfg`` with a model and arrays given from Python in its model and data sections.

    ``model``: a module-level function (or class) returning a fresh ``nn.Module``, or a
    ``functools.partial`` of one (``partial(timm.create_model, "resnet18", num_classes=10)``),
    called once per model perturbd builds (clean twin, backdoored model, the adversary's under
    knowledge ``model``) with torch's RNG seeded first: ``model.name: factory:<module>:<name>``
    with the partial's arguments in ``model.kwargs``; or an ``nn.Module`` instance (plain or from
    :func:`~perturbd.models.wrap`), deep-copied for each: ``model.name: module:<digest>``
    (:func:`~perturbd.models.model_section`). ``data``: ``(x_train, y_train, x_test, y_test)``
    arrays or tensors, becoming ``data.name: arrays:<digest>`` (:mod:`perturbd.data.arrays`).
    """
    if model is not None:
        cfg = cfg.model_copy(update={"model": model_section(model, cfg.model)})
    if data is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"name": register_arrays(data)})})
    return cfg


def environment(device: str) -> dict[str, Any]:
    """Versions, device, CPU, threads, malloc and commit that made a run (queried, never set)."""
    info: dict[str, Any] = {
        **code_identity(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "device": device,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "malloc": malloc_state(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_run(
    folder: Path,
    cfg: ExperimentConfig,
    plan: AttackPlan,
    trained: Trained,
    metrics: RunMetrics,
    device: str,
    lines: list[str],
    reports: list[DefenseReport] | None = None,
) -> None:
    """Write every file of a run folder (:class:`~perturbd.runs.folder.RunDir`) into ``folder``
    (with the defences' report, their figures and the one-row matrix when defences ran)."""
    out = RunDir(folder)
    out.write_config(cfg)
    out.write_metrics(metrics)
    out.write_adversary(plan.record)
    out.write_environment(environment(device))
    p = trained.poisoned
    out.write_poison_indices(
        PoisonRecord(
            indices=p.indices.tolist(),
            original_labels=p.original_labels.tolist(),
            target=cfg.poison.target,
            noise_indices=p.noise_indices.tolist(),
        )
    )
    plan.trigger.save(out.trigger_path)
    trigger_png(plan.trigger.preview(p.clean_images), out.trigger_png, f"{plan.trigger.kind} trigger")
    samples_png(p.clean_images, p.poisoned_images, out.samples_png)
    meta = {"config_hash": cfg.hash(), "seed": str(cfg.seed)}
    save_model(trained.backdoored, out.model_path, meta)
    save_model(trained.clean, out.clean_model_path, meta)
    if reports:
        write_defenses(folder, reports, CLEAN_SOURCE)
        write_matrix(matrix_rows([folder]), folder)
    out.write_log(lines)
