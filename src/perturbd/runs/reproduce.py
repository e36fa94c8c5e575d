"""Train a finished run again and compare its numbers.

This is the check behind "same seed ⇒ same numbers", and the way back to a run's weights when only
its numbers were kept (results are committed without their weights). The retrain uses the run's
own config and this code. It *reproduces* the run when it gives exactly the stored
:data:`REPRODUCED` numbers. Float results depend on the code and on the CPU's kernels (instruction
sets, thread count), so a :class:`Reproduction` says which code and which CPU made each side.

    perturbd reproduce RUN                 # retrain into ./reproduce-<RUN>, compare; exit 1 if they differ
    perturbd reproduce RUN --restore       # and, if reproduced, put its weights into RUN
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perturbd.errors import ConfigError, DataError
from perturbd.provenance import cpu_name
from perturbd.runs.experiment import run
from perturbd.runs.folder import RunDir
from perturbd.runs.rundir import run_dir_for
from perturbd.train import Monitor

#: the numbers a retrain must give bit for bit to count as the same run
REPRODUCED = ("clean_accuracy", "clean_twin_accuracy", "attack_success_rate", "clean_model_asr", "poisoned_count")


@dataclass
class Reproduction:
    """A stored run (``run_dir``) beside its retrain (``again``): their :data:`REPRODUCED` numbers
    and ``notes`` on what differs between the two makings (code, CPU)."""

    run_dir: Path
    again: Path
    stored: dict[str, Any]
    retrained: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def differ(self) -> list[str]:
        """The :data:`REPRODUCED` keys whose numbers differ."""
        return [key for key in REPRODUCED if self.stored.get(key) != self.retrained.get(key)]

    @property
    def same(self) -> bool:
        return not self.differ

    def summary(self) -> str:
        """One line: reproduced, or which numbers differ (stored against retrained)."""
        if self.same:
            return f"{self.run_dir.name}: reproduced exactly ({', '.join(REPRODUCED)})"
        said = ", ".join(f"{key} {self.retrained.get(key)} (stored {self.stored.get(key)})" for key in self.differ)
        return f"{self.run_dir.name} trained again does not reproduce its stored run: {said}"

    def record(self) -> dict[str, Any]:
        """What to keep beside anything computed from the retrain instead of the stored run."""
        return {
            "run": self.run_dir.name, "cpu": cpu_name(), "notes": self.notes,
            "retrained": {key: self.retrained.get(key) for key in REPRODUCED},
            "stored": {key: self.stored.get(key) for key in REPRODUCED},
        }  # fmt: skip


def _cpu_of(folder: Path) -> str | None:
    """The CPU that made the run in ``folder`` (``None`` if its environment record does not say)."""
    cpu = RunDir(folder).environment().get("cpu")
    return cpu if isinstance(cpu, str) else None


def _made_here(folder: Path) -> bool:
    """Whether the run in ``folder`` was made by this code on this CPU (a retrain kept from
    before is reused only then)."""
    return RunDir(folder).other_code() is None and _cpu_of(folder) == cpu_name()


def _notes(folder: Path) -> list[str]:
    """How the making of the stored run differs from a retrain here: its code, its CPU."""
    notes = [line for line in [RunDir(folder).other_code()] if line is not None]
    cpu = _cpu_of(folder)
    if cpu is None:
        notes.append(f"{folder} does not name the CPU that made it; this is {cpu_name()}")
    elif cpu != cpu_name():
        notes.append(f"{folder} was made on {cpu}, this is {cpu_name()}")
    return notes


def reproduce(
    folder: Path,
    out: Path,
    *,
    overrides: list[str] | None = None,
    twin_cache: Path | None = None,
    monitor: Monitor | None = None,
    log: Callable[[str], None] | None = None,
    trust_code: bool = False,
) -> Reproduction:
    """Train the run in ``folder`` again into ``out`` and compare its numbers with the stored ones.

    A retrain already in ``out``, made by this code on this CPU, is reused (not trained a second
    time). ``overrides``: config keys to change first, such as ``data.root=DIR`` on another
    machine. ``twin_cache``: the clean-twin store the run used, if any (see :mod:`perturbd.runs.twins`).
    ``trust_code``: a run whose config names code to run (``factory:``, ``torchscript:``) is
    trained again; otherwise it is refused (:mod:`perturbd.trust`).

    The stored numbers are read first, tolerantly (:meth:`RunDir.stored_metrics`): a run written
    by another perturbd version is compared on the numbers it holds (one it lacks differs, shown
    as ``None``); a ``metrics.json`` that cannot be read at all is a one-line :class:`DataError`
    before anything is trained.
    """
    stored = RunDir(folder)
    folder = stored.path
    cfg = stored.config(overrides, trust_code=trust_code)
    held = stored.stored_metrics()
    if not held.data:
        raise DataError(held.problem or f"{stored.metrics_path} holds no metrics; rerun the run with --force")
    dest = run_dir_for(cfg, out)
    if dest.resolve() == folder.resolve():
        raise ConfigError(f"the retrain of {folder} would be the run itself; give another --out folder")
    if Path(out).expanduser().resolve().is_relative_to(folder.resolve()):
        raise ConfigError(f"--out {out} is inside the run {folder}; give a folder outside it")
    again = run(cfg, out, twin_cache=twin_cache, monitor=monitor, log=log, force=dest.is_dir() and not _made_here(dest))
    return Reproduction(folder, again.run_dir, held.data, again.metrics.to_json(), _notes(folder))


def restore(rep: Reproduction) -> None:
    """Move a reproducing retrain's weights into the stored run and remove the retrain: the run
    then holds the very model its numbers were measured on. Refused (``ValueError``) otherwise."""
    if not rep.same:
        raise ValueError(rep.summary() + "; its weights are not the stored run's")
    for name in RunDir.WEIGHTS:
        os.replace(rep.again / name, rep.run_dir / name)
    shutil.rmtree(rep.again)
