"""``masks.csv``: the model-computed masks a folder of runs used (the adaptive mask, LF, …), one row
per mask, from each run's ``adversary.json`` (written by :func:`perturbd.report.build.build_report`)."""

from __future__ import annotations

import csv
import io
from typing import Any

from perturbd.report.aggregate import RunRecord, sortable

MASK_COLUMNS = (
    "seed", "knowledge", "model", "surrogate", "model_holdout_accuracy", "method", "norm", "budget", "samples",
    "passes_used", "seconds", "fooling_rate_samples", "fooling_rate_holdout", "holdout_size", "l2", "linf",
)  # fmt: skip


def _mask_row(record: RunRecord) -> dict[str, Any] | None:
    """The computed mask a run used (``adversary.json``: the knowledge, the model it was computed
    on, the trigger's record), or None for a trigger computed from no model."""
    adversary = record.run.adversary() or {}
    model, trigger = adversary.get("model") or {}, adversary.get("trigger") or {}
    if not model or "method" not in trigger:
        return None

    def rounded(value: Any, digits: int) -> Any:
        return round(value, digits) if isinstance(value, float) else value

    return {
        "seed": record.flat_config.get("seed"), "knowledge": adversary.get("knowledge"), "model": model.get("arch"),
        "surrogate": model.get("surrogate"), "model_holdout_accuracy": rounded(model.get("holdout_accuracy"), 4),
        "method": trigger["method"], "norm": trigger.get("norm"), "budget": trigger.get("budget"),
        "samples": trigger.get("samples"), "passes_used": trigger.get("passes_used"), "seconds": rounded(trigger.get("seconds"), 3),
        "fooling_rate_samples": rounded(trigger.get("fooling_rate_samples"), 5),
        "fooling_rate_holdout": rounded(trigger.get("fooling_rate_holdout"), 5), "holdout_size": trigger.get("holdout_size"),
        "l2": rounded(trigger.get("l2"), 2), "linf": rounded(trigger.get("linf"), 2),
    }  # fmt: skip


def masks_csv(records: list[RunRecord]) -> str | None:
    """One row per model-computed mask the runs used (runs of several rates share a mask: it is
    listed once), sorted by knowledge, model, method, norm, budget and seed; None when no run
    computed one."""
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        row = _mask_row(record)
        if row is not None:
            rows.setdefault(tuple(row.values()), row)
    if not rows:
        return None
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(MASK_COLUMNS))
    w.writeheader()
    order = ("knowledge", "model", "method", "norm", "budget", "seed")
    w.writerows(sorted(rows.values(), key=lambda r: tuple(sortable(r[k]) for k in order)))
    return buf.getvalue()
