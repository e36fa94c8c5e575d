"""The smallest injection rate that reaches an attack-success goal: read from finished runs, or
searched by bisection over a sweep's ``poison.rate`` axis.

A *row* of a sweep is its runs that differ only in ``poison.rate`` and ``seed`` (:func:`row_of`).
A rate *reaches* the goal when most of its seeds have ASR ≥ ``goal`` (:func:`reached`: more than
half; ASR a fraction in [0, 1]). The bisection (:func:`next_probe`, :func:`bisect_round`) trains
every seed at each rate it tries and, for a grid of ``n`` rates, tries at most ⌈log2(n + 1)⌉ of
them per row. It assumes a row that reaches the goal at one rate reaches it at every larger one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path

from perturbd.config import ExperimentConfig
from perturbd.runs.folder import RunDir
from perturbd.runs.rundir import run_dir_for
from perturbd.sweep.config import Sweep

__all__ = ["asr_by_rate", "bisect_round", "finished", "next_probe", "outcomes", "reached", "row_of", "smallest_rate"]

Runs = list[tuple[ExperimentConfig, Path]]  # (config, its run directory)


def row_of(cfg: ExperimentConfig) -> str:
    """The row ``cfg`` belongs to: its config without ``poison.rate`` and ``seed`` (as JSON)."""
    return cfg.model_dump_json(exclude={"seed": True, "poison": {"rate"}})


def finished(sweep: Sweep) -> Runs:
    """The runs of ``sweep`` that have their metrics on disk, in the sweep's order."""
    runs = [(cfg, run_dir_for(cfg, sweep.out)) for cfg in sweep.runs]
    return [(cfg, folder) for cfg, folder in runs if RunDir(folder).is_run()]


def asr_by_rate(runs: Runs) -> dict[float, list[float]]:
    """The attack success rates of ``runs`` by injection rate, rates ascending (runs in order)."""
    by_rate: dict[float, list[float]] = {}
    for cfg, folder in runs:
        by_rate.setdefault(cfg.poison.rate, []).append(RunDir(folder).metrics().attack_success_rate)
    return dict(sorted(by_rate.items()))


def reached(asr: list[float], goal: float) -> bool:
    """Most seeds (more than half of ``asr``) reach ASR ≥ ``goal``."""
    return sum(a >= goal for a in asr) * 2 > len(asr)


def smallest_rate(runs: Runs, goal: float) -> float | None:
    """The smallest rate at which most seeds of ``runs`` reach ASR ≥ ``goal`` (None: no rate does)."""
    return next((rate for rate, asr in asr_by_rate(runs).items() if reached(asr, goal)), None)


def outcomes(runs: Runs, seeds: int, goal: float) -> dict[float, bool]:
    """Whether most seeds reach ASR ≥ ``goal``, at each rate that all ``seeds`` have run."""
    return {rate: reached(asr, goal) for rate, asr in asr_by_rate(runs).items() if len(asr) == seeds}


def next_probe(rates: list[float], known: dict[float, bool]) -> float | None:
    """The rate a bisection tries next, given which rates are known to reach the goal (True) or
    not (False); None once the smallest reaching rate is pinned (or none of the grid reaches it).

    The answer lies above the largest failing rate below the smallest reaching one and at most
    at that reaching rate (past the grid's end when none reaches)."""
    rates = sorted(rates)
    hi = next((i for i, r in enumerate(rates) if known.get(r) is True), len(rates))
    lo = max((i for i, r in enumerate(rates[:hi]) if known.get(r) is False), default=-1)
    return rates[(lo + hi) // 2] if hi - lo > 1 else None


def bisect_round(sweep: Sweep, goal: float, row: Callable[[ExperimentConfig], Hashable] = row_of) -> list[ExperimentConfig]:
    """The runs of the next bisection round, by seed: for each row (``row``) still searching,
    every seed at its next rate that has no run directory yet (none: the search is over)."""
    done = finished(sweep)
    finished_hashes = {cfg.hash() for cfg, _ in done}
    todo = []
    for key in dict.fromkeys(row(cfg) for cfg in sweep.runs):
        cfgs = [cfg for cfg in sweep.runs if row(cfg) == key]
        known = outcomes([(cfg, folder) for cfg, folder in done if row(cfg) == key], len(sweep.spec.seeds), goal)
        probe = next_probe(sorted({cfg.poison.rate for cfg in cfgs}), known)
        todo += [cfg for cfg in cfgs if cfg.poison.rate == probe and cfg.hash() not in finished_hashes]
    return sorted(todo, key=lambda c: c.seed)
