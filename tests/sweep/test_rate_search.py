"""The rate search (:mod:`perturbd.sweep.rate_search`): the smallest rate most seeds reach, and
its bisection over a sweep's rates, read from run directories on disk."""

from __future__ import annotations

from pathlib import Path

from conftest import hand_metrics

from perturbd.config import ExperimentConfig, load_config
from perturbd.runs.folder import RunDir
from perturbd.runs.rundir import run_dir_for
from perturbd.sweep.config import SweepConfig, expand
from perturbd.sweep.rate_search import (
    bisect_round,
    finished,
    next_probe,
    row_of,
    smallest_rate,
)

GOAL = 0.9
RATES = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]


def write_asr(folder: Path, asr: float, cfg: ExperimentConfig | None = None) -> None:
    """A finished run's folder (its config, default ``load_config()``, and its metrics) with ASR ``asr``."""
    folder.mkdir(parents=True)
    RunDir(folder).write_config(cfg or load_config())
    RunDir(folder).write_metrics(hand_metrics(attack_success_rate=asr))


def test_smallest_rate_needs_most_seeds(tmp_path: Path) -> None:
    runs = []
    for rate, asrs in ((0.01, [0.95, 0.5, 0.92]), (0.001, [0.95, 0.2, 0.3]), (0.005, [0.91, 0.9, 0.1])):
        for seed, asr in enumerate(asrs):
            write_asr(tmp_path / f"{rate}-{seed}", asr)
            runs.append((load_config(overrides=[f"poison.rate={rate}", f"seed={seed}"]), tmp_path / f"{rate}-{seed}"))
    assert smallest_rate(runs, GOAL) == 0.005
    assert smallest_rate(runs, goal=0.99) is None


def test_bisection_pins_the_smallest_rate_of_a_monotone_row() -> None:
    for first in range(len(RATES) + 1):  # the first rate that reaches the goal; len: none does
        known: dict[float, bool] = {}
        while (probe := next_probe(RATES, known)) is not None:
            assert probe not in known
            known[probe] = RATES.index(probe) >= first
        assert len(known) <= 4, "at most ⌈log2(9)⌉ rates of 8"
        found = next((r for r in sorted(known) if known[r]), None)
        assert found == (RATES[first] if first < len(RATES) else None)
    assert next_probe(RATES, {0.001: False, 0.002: True}) is None
    assert next_probe(RATES, {0.002: True, 0.05: False}) == 0.0005, "a failure above a success is not the lower bound"


def test_a_row_is_the_runs_that_differ_only_in_rate_and_seed() -> None:
    one = load_config(overrides=["trigger.kind=grid", "poison.rate=0.01", "seed=0"])
    assert row_of(one) == row_of(load_config(overrides=["trigger.kind=grid", "poison.rate=0.1", "seed=3"]))
    assert row_of(one) != row_of(load_config(overrides=["trigger.kind=sig", "poison.rate=0.01", "seed=0"]))


def test_bisect_rounds_read_the_runs_on_disk_and_train_every_seed_of_a_probed_rate(tmp_path: Path) -> None:
    spec = SweepConfig(
        name="rates", base={"poison": {"target": 0}},
        variants=[{"trigger": {"kind": "grid", "psnr": 34.5}}, {"trigger": {"kind": "sig", "psnr": 34.5}}],
        axes={"poison.rate": RATES}, seeds=[0, 1, 2], out=tmp_path,
    )  # fmt: skip
    full = expand(spec)
    first = {"grid": 0.002, "sig": 1.0}  # seed 2 of grid never reaches: most seeds still do

    def asr(cfg: ExperimentConfig) -> float:
        return 0.95 if cfg.poison.rate >= first[cfg.trigger.kind] and cfg.seed != 2 else 0.1

    trained: list[ExperimentConfig] = []
    rounds = 0
    while todo := bisect_round(full, GOAL):
        rounds += 1
        assert len({(c.trigger.kind, c.poison.rate) for c in todo}) * 3 == len(todo), "all seeds of each probed cell"
        assert [c.seed for c in todo] == sorted(c.seed for c in todo)
        for cfg in todo:
            write_asr(run_dir_for(cfg, full.out), asr(cfg), cfg)
        trained += todo
    assert rounds == 4 and len(trained) < len(full.runs) / 2
    done = finished(full)
    assert smallest_rate([x for x in done if x[0].trigger.kind == "grid"], GOAL) == 0.002
    assert smallest_rate([x for x in done if x[0].trigger.kind == "sig"], GOAL) is None
