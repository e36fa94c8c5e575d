"""The defences' record of a folder (``defenses.json``): results that accumulate.

One entry per defence *and parameters*: a second ``perturbd defend`` on the same folder adds its
entries beside the earlier ones instead of overwriting the file; an entry of the same report name
and the same parameters (the seed included, as filled from the run) is the same experiment, which
:func:`perturbd.evaluation.run_defenses` skips unless asked to run it again (``--rerun``), and
which then replaces the earlier entry in place (:func:`merge`).

The record (format 2)::

    {"format": 2, "clean_source": ..., "code": {...},      # the latest write's
     "defenses": [{"name", "kind", "params", "seconds", "clean_images_used", "metrics", "cell",
                   "figures", "clean_source", "code", "when", ["defense"]}, ...]}

Each entry carries its own ``clean_source``, ``code`` (which code defended) and ``when`` (UTC,
ISO 8601), since entries of one file may come from several commands. A record written before
(format 1: ``clean_source`` and ``code`` at the top only, the committed results under
``experiments/`` among them) reads as it is: its entries take the top-level ``clean_source`` and
``code`` when merged. Every reader reads entries through :func:`entries`, which refuses a file
that is not a record in one line.

This module needs no torch: the reports read records through it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from perturbd.errors import DataError
from perturbd.runs.folder import RunDir

#: the record format this code writes (1: before entries carried their own provenance)
FORMAT = 2


def entries(record: Any, where: object = RunDir.DEFENSES) -> list[dict[str, Any]]:
    """The entries of ``record`` (a parsed ``defenses.json``); a one-line :class:`DataError` naming
    ``where`` if it is not a defences record (a mapping whose ``defenses`` is a list of mappings,
    each with a text ``name`` and a mapping ``cell``)."""
    found = record.get("defenses") if isinstance(record, dict) else None
    if not isinstance(found, list):
        raise DataError(f"{where} is not a perturbd defences record (no list 'defenses'); move it away or give another --out")
    for i, e in enumerate(found):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not isinstance(e.get("cell"), dict):
            raise DataError(
                f"{where}: entry {i} of 'defenses' is not a defence's report (a mapping with a text 'name' and a mapping 'cell'); "
                "move the file away or give another --out"
            )
    return found


def plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists): how parameters are compared."""
    return json.loads(json.dumps(value, sort_keys=True))


def same(entry: dict[str, Any], name: str, params: dict[str, Any]) -> bool:
    """Whether ``entry`` is the report of ``name`` run with ``params``."""
    return entry.get("name") == name and plain(entry.get("params")) == plain(params)


def find(found: Sequence[dict[str, Any]], name: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The entry of ``name`` with ``params`` among ``found`` (None if there is none)."""
    return next((e for e in found if same(e, name, params)), None)


def merge(record: Any, new: Sequence[dict[str, Any]], clean_source: str, code: dict[str, Any], when: str) -> dict[str, Any]:
    """``record`` (None: no file yet) with the entries ``new`` added: each replaces, in place, an
    entry of the same name and parameters, or is appended. New entries get ``clean_source``,
    ``code`` and ``when``; older entries without their own provenance take their record's."""
    old = [] if record is None else entries(record)
    top = record if isinstance(record, dict) else {}
    merged = [{"clean_source": top.get("clean_source"), "code": top.get("code"), **e} for e in old]
    for e in new:
        e = {**e, "clean_source": clean_source, "code": code, "when": when}
        at = next((i for i, o in enumerate(merged) if same(o, e["name"], e.get("params", {}))), None)
        if at is None:
            merged.append(e)
        else:
            merged[at] = e
    return {"format": FORMAT, "clean_source": clean_source, "code": code, "defenses": merged}


def _params(entry: dict[str, Any]) -> dict[str, Any]:
    params = entry.get("params")
    return params if isinstance(params, dict) else {}


def labels(found: Sequence[dict[str, Any]]) -> list[str]:
    """A column name per entry: its ``name`` where no other entry has that name, else the name and
    the parameters in which the entries of that name differ (``fine_tuning [epochs=5, lr=0.01]``);
    a name that would still repeat gets ``#2``, ``#3``."""
    out: list[str] = []
    for e in found:
        twins = [_params(o) for o in found if o.get("name") == e["name"]]
        mine = _params(e)
        keys = sorted({k for p in twins for k in p if any(plain(t.get(k)) != plain(mine.get(k)) for t in twins)})
        label = f"{e['name']} [{', '.join(f'{k}={mine.get(k)}' for k in keys)}]" if keys else e["name"]
        n = 1
        while (label if n == 1 else f"{label} #{n}") in out:
            n += 1
        out.append(label if n == 1 else f"{label} #{n}")
    return out
