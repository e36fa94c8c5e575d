"""The sweep file: its sections, and its expansion into one validated config per run.

Imports no torch, so that ``perturbd sweep`` answers a mistake in the file at once.

A sweep file is a YAML mapping::

    base: {data: {name: mnist5k}, train: {epochs: 5}}   # or base_config: experiment.yaml
    axes:                                              # dotted config key → values
      poison.rate: [0.01, 0.02, 0.05]
      trigger.amplitude: {range: [4, 12, 2]}           # 4, 6, 8, 10 (stop excluded, as range())
      train.lr: {logspace: [0.01, 0.1, 3]}             # 0.01, 0.0316, 0.1 (geometric, inclusive)
      trigger: [{kind: grid, amplitude: 6}, {kind: adaptive, budget: 10}]   # linked keys
    variants:                                          # optional: alternatives merged into base
      - {trigger: {kind: grid, amplitude: 10}}         # (a union; the grid of axes applies to each)
      - {trigger: {kind: adaptive}, attack: {knowledge: none}}
    seeds: [0, 1]                                      # or an int n: seeds 0 … n-1 (0 ≤ seed < 2^63)
    max_runs: 10000                                    # refuse a larger expansion (--max-runs N)
    executor: local                                    # local | ray
    workers: auto                                      # local: 1 = in-process; N = process pool
    ray: {address: null, num_gpus_per_run: 0}
    out: runs/my-sweep
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from perturbd.config import ExperimentConfig, Section, apply_overrides, flat_keys, read_yaml, set_dotted, validate
from perturbd.errors import ConfigError
from perturbd.limits import MAX_SWEEP_RUNS, SEED_LIMIT
from perturbd.sweep.axes import axis_values, check_key, deep_merge

TWINS = ".twins"


class RayConfig(Section):
    address: str | None = Field(None, description="existing cluster (ray://host:10001 or auto); none: start a local Ray")
    num_gpus_per_run: float = Field(0.0, ge=0, description="GPUs each run asks Ray for (fractions allowed)")
    num_cpus_per_run: float = Field(1.0, gt=0, description="CPUs each run asks Ray for; torch uses that many threads")


def _no_variant() -> list[dict[str, Any]]:
    """The default variants: one, which changes nothing."""
    return [{}]


class SweepConfig(Section):
    name: str | None = Field(None, description="sweep name; default: the file name")
    base: dict[str, Any] = Field(default_factory=dict, description="the experiment config every run starts from")
    base_config: Path | None = Field(None, description="experiment YAML to start from (relative to the sweep file)")
    variants: list[dict[str, Any]] = Field(
        default_factory=_no_variant, description="partial configs merged into the base, one after the other (a union, not a product)"
    )
    axes: dict[str, Any] = Field(default_factory=dict, description="dotted config key → list of values, {range: …} or {logspace: …}")
    max_runs: int = Field(
        MAX_SWEEP_RUNS,
        ge=1,
        description="the most runs the sweep may expand to (seeds × variants × axes), checked before a run is listed; "
        "raise it (or pass --max-runs) to run a larger sweep",
    )
    seeds: list[int] = Field([0], description="seeds of every grid point, or n for seeds 0 … n-1 (each 0 ≤ seed < 2^63)")
    executor: Literal["local", "ray"] = "local"
    workers: int | Literal["auto"] = Field("auto", description="local: runs at once (1 = in this process)")
    out: Path = Field(Path("runs/sweep"), description="folder of the run directories")
    ray: RayConfig = RayConfig()

    @field_validator("seeds", mode="before")
    @classmethod
    def _count_as_list(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            limit = info.data.get("max_runs", MAX_SWEEP_RUNS)
            if value > limit:
                raise ValueError(
                    f"a count of seeds above max_runs ({limit:,}); give fewer, or raise max_runs: (or --max-runs) if you mean it"
                )
            return list(range(value))
        return value

    @field_validator("seeds")
    @classmethod
    def _seed_list(cls, seeds: list[int]) -> list[int]:
        if not seeds or any(s < 0 for s in seeds):
            raise ValueError("seeds must be a non-empty list of non-negative ints, or a positive count")
        if any(s >= SEED_LIMIT for s in seeds):
            raise ValueError(f"each seed must be below 2^63 = {SEED_LIMIT}")
        return list(dict.fromkeys(seeds))

    @field_validator("workers")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("workers must be auto or at least 1")
        return value


@dataclass
class Sweep:
    """An expanded sweep: the spec and every run's validated config, in run order."""

    spec: SweepConfig
    runs: list[ExperimentConfig]
    assignments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.spec.out).expanduser()

    @property
    def twin_cache(self) -> Path:
        return self.out / TWINS


# --------------------------------------------------------------------------- loading


def read_sweep(path: Path, overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> Sweep:
    """Read a sweep file and expand it; every run's config is validated (the names it uses are
    checked by :func:`perturbd.sweep.runner.load_sweep`).

    ``overrides`` replaces top-level sweep keys (``out``, ``executor``, ``workers``); ``sets``
    are ``section.key=value`` overrides of the base experiment config (as ``perturbd run --set``).
    A relative ``base_config`` is read relative to the sweep file.
    """
    path = Path(path).expanduser()
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    data.setdefault("out", str(Path("runs") / path.stem))
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    spec = validate(data, SweepConfig)
    if spec.base_config is not None:
        base_path = spec.base_config if spec.base_config.is_absolute() else path.parent / spec.base_config
        spec = spec.model_copy(update={"base_config": base_path.expanduser()})
    if sets:
        base = read_yaml(spec.base_config) if spec.base_config is not None else spec.base
        spec = spec.model_copy(update={"base": apply_overrides(base, sets), "base_config": None})
    return expand(spec)


def check_size(spec: SweepConfig, axes: list[tuple[str, list[Any]]]) -> int:
    """The number of runs the sweep expands to (before duplicates are dropped); a
    :class:`ConfigError` naming the count and its factors when it is above ``max_runs``."""
    factors = [("seeds", len(spec.seeds)), ("variants", len(spec.variants)), *((key, len(values)) for key, values in axes)]
    total = math.prod(n for _, n in factors)
    if total > spec.max_runs:
        shown = " × ".join(f"{n:,} {name}" for name, n in factors if n != 1 or name == "seeds")
        raise ConfigError(
            f"the sweep expands to {total:,} runs ({shown}), more than max_runs ({spec.max_runs:,}); "
            f"shrink it, or set max_runs: {total} in the sweep file (or --max-runs {total}) if you mean it"
        )
    return total


def expand(spec: SweepConfig) -> Sweep:
    """(variants × grid) × seeds as validated configs: seeds outermost (a half-done sweep already
    covers the whole grid once), then variants, then the axes in file order; a config that
    comes up twice is kept once."""
    if spec.base and spec.base_config is not None:
        raise ConfigError("a sweep takes `base:` or `base_config:`, not both; merge them into one")
    base = read_yaml(spec.base_config) if spec.base_config is not None else json.loads(json.dumps(spec.base, default=str))
    if "seed" in base:
        raise ConfigError("the sweep's base config sets `seed`; list seeds under `seeds:` instead")
    axes: list[tuple[str, list[Any]]] = []
    for key, values in spec.axes.items():
        check_key(key)
        axes.append((key, axis_values(key, values, spec.max_runs)))
    check_size(spec, axes)
    validate({k: v for k, v in base.items() if k != "trigger"})  # a bad base is reported once, not per run; its
    # trigger keys are checked per run, against the kind a variant or an axis may set
    runs: list[ExperimentConfig] = []
    assignments: list[dict[str, Any]] = []
    seen: set[str] = set()
    for variant in spec.variants:
        if not isinstance(variant, dict):
            raise ConfigError(f"sweep variants must be mappings of config sections, got {variant!r}")
        if "seed" in variant:
            raise ConfigError("a sweep variant sets `seed`; list seeds under `seeds:` instead")
    for seed, variant, combo in itertools.product(spec.seeds, spec.variants, itertools.product(*(values for _, values in axes))):
        data = deep_merge(json.loads(json.dumps(base, default=str)), variant)
        assigned = {}
        for (key, _), value in zip(axes, combo):
            set_dotted(data, key, value, merge=True)
            assigned[key] = value
        data["seed"] = seed
        if "name" not in base:
            data["name"] = spec.name
        try:
            cfg = validate(data)
        except ConfigError as err:
            shown = ", ".join(f"{k}={v}" for k, v in {**flat_keys(variant), **assigned}.items()) or "base"
            raise ConfigError(f"sweep run ({shown}): {err}") from None
        if cfg.hash() not in seen:
            seen.add(cfg.hash())
            runs.append(cfg)
            assignments.append({**flat_keys(variant), **assigned, "seed": seed})
    return Sweep(spec, runs, assignments)
