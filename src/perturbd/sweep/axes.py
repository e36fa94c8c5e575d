"""Sweep axes: value generators (``range``, ``linspace``, ``logspace``), key checks and merging
of partial configs into a base config (dotted keys: :func:`perturbd.config.set_dotted`). Used by
:mod:`perturbd.sweep.config`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from perturbd.config import ExperimentConfig, section_fields
from perturbd.errors import ConfigError
from perturbd.limits import MAX_SWEEP_RUNS
from perturbd.registry import suggest


def axis_values(key: str, spec: Any, limit: int = MAX_SWEEP_RUNS) -> list[Any]:
    """The values of one axis: a list as is, or ``{range: [start, stop, step]}`` (stop excluded),
    ``{linspace: [start, stop, n]}`` or ``{logspace: [start, stop, n]}`` (both inclusive).

    A generator's length is counted first: one of more than ``limit`` values is a
    :class:`ConfigError` before a value is made."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"sweep axis '{key}' has no values; give a non-empty list")
        return spec
    if isinstance(spec, dict) and len(spec) == 1:
        ((kind, args),) = spec.items()
        maker = _RANGES.get(kind)
        if maker is None:
            raise ConfigError(f"sweep axis '{key}': unknown generator '{kind}'{suggest(str(kind), list(_RANGES))}")
        if not (isinstance(args, list) and len(args) == 3 and all(isinstance(a, (int, float)) for a in args)):
            raise ConfigError(f"sweep axis '{key}': {kind} takes [start, stop, {'step' if kind == 'range' else 'n'}], got {args!r}")
        if not all(isinstance(a, int) or math.isfinite(a) for a in args):
            raise ConfigError(f"sweep axis '{key}': {kind} takes finite numbers, got {args}")
        count = _COUNTS[kind](*args)
        if count > limit:
            raise ConfigError(
                f"sweep axis '{key}': {kind} {args} gives {count:,} values, more than the sweep's max_runs ({limit:,}); "
                f"use a coarser step, or raise max_runs: in the sweep file (or --max-runs) if you mean it"
            )
        values = maker(*args)
        if not values:
            raise ConfigError(f"sweep axis '{key}': {kind} {args} gives no value")
        return values
    raise ConfigError(f"sweep axis '{key}' must be a list of values or {{range|linspace|logspace: [a, b, c]}}, got {spec!r}")


def _tidy(x: float) -> float:
    return float(f"{x:.6g}")


def _range_count(start: float, stop: float, step: float) -> int:
    if step == 0:
        raise ConfigError("sweep axis range step must not be 0")
    if all(isinstance(a, int) for a in (start, stop, step)):
        return len(range(int(start), int(stop), int(step)))
    try:
        ratio = (stop - start) / step
    except OverflowError:
        return 2**63
    return max(0, math.ceil(ratio - 1e-9)) if math.isfinite(ratio) else 2**63


def _range(start: float, stop: float, step: float) -> list[Any]:
    if all(isinstance(a, int) for a in (start, stop, step)):
        return list(range(int(start), int(stop), int(step)))
    n = _range_count(start, stop, step)
    return [_tidy(start + i * step) for i in range(n)]


def _n_count(start: float, stop: float, n: float) -> int:
    return max(1, int(n))


def _linspace(start: float, stop: float, n: float) -> list[Any]:
    n = int(n)
    return [_tidy(start + (stop - start) * i / (n - 1)) for i in range(n)] if n > 1 else [start]


def _logspace(start: float, stop: float, n: float) -> list[Any]:
    if start <= 0 or stop <= 0:
        raise ConfigError(f"sweep axis logspace needs positive start and stop, got {start}, {stop}")
    n = int(n)
    if n <= 1:
        return [start]
    ratio = (stop / start) ** (1 / (n - 1))
    return [_tidy(start * ratio**i) for i in range(n)]


_RANGES: dict[str, Callable[[float, float, float], list[Any]]] = {"range": _range, "linspace": _linspace, "logspace": _logspace}
_COUNTS: dict[str, Callable[[float, float, float], int]] = {"range": _range_count, "linspace": _n_count, "logspace": _n_count}


def check_key(key: str) -> None:
    """A :class:`ConfigError` unless ``key`` names a field (or section) of the experiment config."""
    if key == "seed":
        raise ConfigError("sweep axis 'seed': list seeds under `seeds:`, not in `axes:`")
    model: type[BaseModel] = ExperimentConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = section_fields(model)
        if part not in fields:
            where = ".".join(parts[:i]) or "config"
            raise ConfigError(f"sweep axis '{key}': '{part}' is not a key of {where}{suggest(part, list(fields))}")
        ann = fields[part].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif i < len(parts) - 1:
            if "dict" in str(ann):
                return  # free-form mapping (e.g. defence params): anything below is allowed
            raise ConfigError(f"sweep axis '{key}': '{'.'.join(parts[: i + 1])}' is a value, not a section")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, mappings merged recursively (``base`` is modified)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = json.loads(json.dumps(value, default=str))
    return base
