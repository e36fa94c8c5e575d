"""Restate the SSIM of finished runs: recompute it, as :func:`perturbd.metrics.stealth` computes it
now, on the very poisoned images each run measured.

Run: ``python tools/restate_ssim.py PATH... [--exclude PATH]... [--data-root OLD=NEW]... [--dry-run]``.
Each PATH is a run folder or a folder of them (:func:`perturbd.runs.folder.run_dirs`).

Before commit 7d9401d a run's ``stealth.ssim_mean`` / ``ssim_min`` were torchmetrics' SSIM (the
border reflected and averaged in); today they are Wang et al.'s (valid window). For each run this
rebuilds the poisoned training images from the folder: the config's data, the seeded partition
(the set the poison went into, the victim's data or the update batch), the positions in
``poison_indices.json`` (the partition must give the same ones) and the saved trigger, applied as
the run applied it (:func:`perturbd.poisoning.poison_dataset`). It recomputes the stealth
metrics, and only if the recomputed PSNR mean and worst equal the stored ones to
:data:`PSNR_TOLERANCE` dB (the same images, then) does it rewrite the two SSIM values in
``metrics.json`` and add ``ssim_restated: {commit, variant}``
(:class:`perturbd.runs.results.Restated`). Nothing else in the folder changes; the file is
replaced whole (written beside it, then renamed), so a folder is never left half-written.
A run whose images cannot be rebuilt is skipped, with one line saying why. A run already
restated to this variant is left as it is.

``--data-root OLD=NEW``: a config written on another machine names its data under OLD (``data.root``
or an ``imagefolder:OLD/...`` source); read it from NEW instead. Exit 1 if any run was skipped.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perturbd.attack.partition import partition
from perturbd.config import ExperimentConfig
from perturbd.data import load_data
from perturbd.data.dataset import DataSplit
from perturbd.errors import PerturbdError
from perturbd.metrics import stealth
from perturbd.poisoning import poison_dataset
from perturbd.process import tune_process
from perturbd.provenance import git_commit
from perturbd.runs.folder import RunDir, run_dirs
from perturbd.runs.rundir import read_json, write_json
from perturbd.runs.saved import load_trigger

VARIANT = "wang2004-valid"  # perturbd.metrics.ssim_each since 7d9401d
PSNR_TOLERANCE = 1e-6  # dB: the recomputed PSNR mean and worst must equal the stored ones to this
IMAGEFOLDER = "imagefolder:"


@dataclass(frozen=True)
class Outcome:
    """What became of one run: ``restated`` (``old`` and ``new``: SSIM mean and worst), ``kept``
    (restated before) or ``skipped`` (``why``)."""

    run: Path
    status: str
    why: str = ""
    old: tuple[float, float] = (math.nan, math.nan)
    new: tuple[float, float] = (math.nan, math.nan)

    def line(self) -> str:
        if self.status != "restated":
            return f"{self.status} {self.run}: {self.why}"
        (om, ow), (nm, nw) = self.old, self.new
        return f"restated {self.run}: SSIM mean {om:.4f} → {nm:.4f}, worst {ow:.4f} → {nw:.4f}"


def parse_roots(pairs: list[str]) -> list[tuple[str, str]]:
    """``OLD=NEW`` pairs as ``(OLD, NEW)``; a one-line ValueError for one without ``=``."""
    roots = []
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise ValueError(f"--data-root takes OLD=NEW, got {pair!r}")
        roots.append((old.rstrip("/"), new.rstrip("/")))
    return roots


def _moved(path: str, roots: list[tuple[str, str]]) -> str | None:
    for old, new in roots:
        if path == old or path.startswith(old + "/"):
            return new + path[len(old) :]
    return None


def data_overrides(settings: dict[str, Any], roots: list[tuple[str, str]]) -> list[str]:
    """The config overrides that read a run's data from its new place (:func:`parse_roots`)."""
    data = settings.get("data") or {}
    name, root = str(data.get("name", "")), str(data.get("root", ""))
    out = []
    if name.startswith(IMAGEFOLDER) and (moved := _moved(name[len(IMAGEFOLDER) :], roots)) is not None:
        out.append(f"data.name={IMAGEFOLDER}{moved}")
    if (moved := _moved(root, roots)) is not None:
        out.append(f"data.root={moved}")
    return out


class DataCache:
    """The last data split loaded, kept for the next run of the same data (runs are visited
    grouped by data, so one split is in memory at a time)."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._split: DataSplit | None = None

    def get(self, cfg: ExperimentConfig) -> DataSplit:
        limited = cfg.data.train_limit is not None or cfg.data.test_limit is not None
        key = cfg.data.model_dump_json() + (f"|seed {cfg.seed}" if limited else "")
        if key != self._key or self._split is None:
            self._key, self._split = None, None  # let the last split go before the next loads
            self._split, self._key = load_data(cfg.data, cfg.seed), key
        return self._split


def _same(a: float, b: float) -> bool:
    return a == b if math.isinf(a) or math.isinf(b) else abs(a - b) <= PSNR_TOLERANCE


def recompute(run: RunDir, cfg: ExperimentConfig, data: DataCache) -> dict[str, float] | str:
    """The stealth metrics of the run's poisoned images rebuilt (or why they cannot be)."""
    trigger = load_trigger(run)
    if trigger is None:
        return f"it kept no {RunDir.TRIGGER}"
    stored = run.poison_indices()
    split = data.get(cfg)
    train = split.train
    part = partition(cfg, train.labels, train.num_classes)
    if part.poison.tolist() != stored.indices:
        return f"the seeded partition no longer gives the positions in {RunDir.POISON_INDICES}"
    poisoned = poison_dataset(part.take(train, part.poisoned_set), trigger, cfg.poison, cfg.seed, part.poison)
    if poisoned.original_labels.tolist() != stored.original_labels:
        return f"the labels of the rebuilt poisoned images differ from {RunDir.POISON_INDICES}'s"
    return stealth(poisoned.clean_images, poisoned.poisoned_images)


def restate(path: Path, data: DataCache, roots: list[tuple[str, str]], commit: str, dry_run: bool = False) -> Outcome:
    """Restate the SSIM of the run in ``path`` (module docstring); what became of it."""
    run = RunDir(path)
    try:
        written = read_json(run.metrics_path)
        old = written["stealth"]
        before = (float(old["ssim_mean"]), float(old["ssim_min"]), float(old["psnr_mean"]), float(old["psnr_min"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        return Outcome(path, "skipped", f"its {RunDir.METRICS} holds no readable stealth metrics ({type(err).__name__}: {err})")
    done = written.get("ssim_restated")
    if isinstance(done, dict) and done.get("variant") == VARIANT:
        return Outcome(path, "kept", f"already restated to {VARIANT}")
    try:
        cfg = run.stored_config(data_overrides(run.settings(), roots))
        now = recompute(run, cfg, data)
    except (PerturbdError, OSError, ValueError) as err:
        return Outcome(path, "skipped", f"its images cannot be rebuilt ({type(err).__name__}: {err})")
    if isinstance(now, str):
        return Outcome(path, "skipped", now)
    if not (_same(now["psnr_mean"], before[2]) and _same(now["psnr_min"], before[3])):
        return Outcome(
            path,
            "skipped",
            f"the rebuilt images are not the run's: PSNR mean / worst {now['psnr_mean']:.9g} / {now['psnr_min']:.9g} dB, "
            f"stored {before[2]:.9g} / {before[3]:.9g}",
        )
    outcome = Outcome(path, "restated", old=before[:2], new=(now["ssim_mean"], now["ssim_min"]))
    if not dry_run:
        restated = {
            **written,
            "stealth": {**old, "ssim_mean": now["ssim_mean"], "ssim_min": now["ssim_min"]},
            "ssim_restated": {"commit": commit, "variant": VARIANT},
        }
        tmp = run.metrics_path.with_name(f".{RunDir.METRICS}.{os.getpid()}.tmp")
        try:
            write_json(tmp, restated)
            os.replace(tmp, run.metrics_path)
        finally:
            tmp.unlink(missing_ok=True)
    return outcome


def runs_under(paths: list[Path], exclude: list[Path]) -> Iterator[Path]:
    """The run folders under ``paths`` (each once) less those under ``exclude``, grouped by data
    (:class:`DataCache` loads each data set once): sorted by data name, root, limits, seed, path."""
    skip = [p.resolve() for p in exclude]
    found: dict[Path, tuple[str, ...]] = {}
    for path in paths:
        for run in run_dirs(path):
            where = run.path.resolve()
            if where in found or any(where.is_relative_to(s) for s in skip):
                continue
            settings = run.settings()
            data = settings.get("data") or {}
            limits = data.get("train_limit") is not None or data.get("test_limit") is not None
            seed = settings.get("seed", 0) if limits else 0
            found[where] = (str(data.get("name")), str(data.get("root")), str(data.get("train_limit")), str(data.get("test_limit")))
            found[where] += (f"{seed:>12}", str(run.path))
    return iter(sorted(found, key=found.__getitem__))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, or folders holding them")
    parser.add_argument("--exclude", action="append", type=Path, default=[], help="leave the runs under this folder alone")
    parser.add_argument("--data-root", action="append", default=[], metavar="OLD=NEW", help="read data named under OLD from NEW")
    parser.add_argument("--dry-run", action="store_true", help="recompute and say what would change; write nothing")
    args = parser.parse_args(argv)
    try:
        roots = parse_roots(args.data_root)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"error: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    commit = git_commit()
    if commit is None:
        print("error: not run from a git checkout of perturbd: the restated SSIM must name the commit that computed it", file=sys.stderr)
        return 2
    tune_process(1)  # one CPU thread: the images are few, the machine may be training
    data, started = DataCache(), time.perf_counter()
    outcomes = []
    for path in runs_under(args.paths, args.exclude):
        t0 = time.perf_counter()
        outcome = restate(path, data, roots, commit, args.dry_run)
        outcomes.append(outcome)
        print(f"{outcome.line()} ({time.perf_counter() - t0:.1f} s)", flush=True)
    count = {status: sum(o.status == status for o in outcomes) for status in ("restated", "kept", "skipped")}
    skipped = count["skipped"]
    print(
        f"{count['restated']} restated{' (dry run: nothing written)' if args.dry_run else ''}, {count['kept']} restated before, "
        f"{skipped} skipped, "
        f"{time.perf_counter() - started:.0f} s, at commit {commit[:10]}"
    )
    return 1 if skipped else 0


if __name__ == "__main__":
    raise SystemExit(main())
