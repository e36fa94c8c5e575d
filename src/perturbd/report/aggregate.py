"""Collect run directories into one table: mean and 95 % interval over seeds per config.

A run directory is any folder holding a finished run (:meth:`~perturbd.runs.folder.RunDir.is_run`;
hidden folders such as ``.twins`` and ``.tmp-*`` are skipped). Metrics are read tolerantly
(:class:`~perturbd.runs.results.StoredMetrics`: a run written by another perturbd version shows the
metrics it has, one it lacks is blank and counted as missing, ``(n=k/N)``) and named and formatted
by the metric table (:data:`~perturbd.runs.results.METRICS`). Runs are grouped by their config
without ``seed``, its trigger section in one form whichever form the run's ``config.yaml`` was
written in (:func:`~perturbd.config.legacy_trigger_section`); each group gets, for every metric,
the mean over its seeds and the half-width of the two-sided 95 % confidence interval of the mean
(Student's t, ``n - 1`` degrees of freedom; blank for one seed).
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from perturbd.config import TriggerConfig, legacy_trigger_section
from perturbd.errors import ConfigError
from perturbd.runs.folder import RunDir, run_dirs, trigger_section
from perturbd.runs.results import METRICS, StoredMetrics, format_value
from perturbd.runs.rundir import FAILURES

ASR_GOAL = 0.9  # the paper's claim: ASR above 90 %
TABLE_METRICS = ["clean_accuracy", "accuracy_loss", "attack_success_rate", "clean_model_asr", "injection_rate", "psnr_mean", "ssim_mean"]

_T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (table to 30, then a
    Cornish–Fisher expansion, error < 1e-3).

    Not ``scipy.stats.t.ppf(0.975, df)``: the two differ by up to 2.3e-4 relative (df = 26),
    which would change every ``ci95`` stored in ``aggregate.csv`` (6 significant digits)."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


class Stat(NamedTuple):
    """A metric over the runs of a group: mean, half-width of the 95 % t-interval, how many
    runs it is over (``n``) and how many runs there are (``of``): a run that lacks the metric
    is counted, never dropped silently."""

    mean: float
    ci: float
    n: int
    of: int


def mean_ci(values: list[float | None]) -> Stat:
    """Mean and half-width of the 95 % t-interval over the values present (``None``, a run that
    lacks the metric, such as one written by another perturbd version, and NaN are missing; an
    infinite value, e.g. the PSNR of unchanged images, is kept); NaN half-width for
    fewer than 2 values."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    n, of = len(vals), len(values)
    if not vals:
        return Stat(math.nan, math.nan, 0, of)
    mean = sum(vals) / n
    if n < 2 or not math.isfinite(mean):
        return Stat(mean, math.nan, n, of)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    return Stat(mean, t975(n - 1) * sd / math.sqrt(n), n, of)


@dataclass
class RunRecord:
    """One run as the reports read it: its folder, its config as written, its metrics as written
    (:class:`StoredMetrics`: a run of another version reads too, with what it has)."""

    path: Path
    config: dict[str, Any]
    metrics: StoredMetrics

    @classmethod
    def read(cls, run: RunDir) -> RunRecord:
        return cls(run.path, run.settings(), run.stored_metrics())

    @property
    def run(self) -> RunDir:
        return RunDir(self.path)

    @property
    def flat_config(self) -> dict[str, Any]:
        """The config flattened (:func:`flatten`), its trigger section in the one flat form of
        :func:`legacy_trigger_section` (the form the run hash is made of), whether the run wrote
        that form or only its kind's keys: runs of one config group together either way (keys
        in the order of that form as written: ``kind`` first)."""
        section = legacy_trigger_section(self.trigger)
        return flatten({**self.config, "trigger": {"kind": section.pop("kind"), **section}})

    @cached_property
    def trigger(self) -> TriggerConfig:
        return trigger_section(self.config)

    def metric(self, name: str) -> float | None:
        """The metric ``name`` (a key of :data:`METRICS`) of this run; ``None`` if it has none."""
        return self.metrics.value(name)

    @property
    def problem(self) -> str | None:
        """Why the run's metrics do not read as this version's, in one line (``None``: they do)."""
        return self.metrics.problem


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists become their YAML flow text."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            out[name] = yaml.safe_dump(value, default_flow_style=True).strip()
        else:
            out[name] = value
    return out


def collect_runs(root: Path) -> list[RunRecord]:
    """Every run directory at or below ``root``, sorted by path."""
    return [RunRecord.read(run) for run in run_dirs(Path(root).expanduser())]


def report_root(path: Path) -> Path:
    """``path`` checked as something to report on (a run directory, or a folder holding runs or
    failure records of a sweep); a one-line :class:`ConfigError` otherwise. Reads no run."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"no such folder: {root}; give a run directory or a folder of runs (e.g. runs/)")
    if next(run_dirs(root), None) is None and not any((root / FAILURES).glob("*.json")):
        raise ConfigError(
            f"no run directories (with {RunDir.METRICS} and {RunDir.CONFIG}) under {root}; run `perturbd run` or `perturbd sweep` first"
        )
    return root


@dataclass
class Group:
    """Runs sharing a config except the seed."""

    keys: dict[str, Any]
    runs: list[RunRecord] = field(default_factory=list)
    stats: dict[str, Stat] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return sorted(int(r.config.get("seed", 0)) for r in self.runs)

    @property
    def seeds_text(self) -> str:
        """How many seeds, then which: ``1 (seed 0)``, ``3 (seeds 0–2)``, ``4 (seeds 0, 2–4)``."""
        return f"{len(self.runs)} ({'seed' if len(self.runs) == 1 else 'seeds'} {seed_span(self.seeds)})"

    @property
    def flat(self) -> dict[str, Any]:
        return self.runs[0].flat_config

    def per_seed(self, metric: str) -> list[float | None]:
        """``metric`` of each run, in the order of :attr:`seeds`."""
        return [r.metric(metric) for r in sorted(self.runs, key=lambda r: int(r.config.get("seed", 0)))]

    def reaching(self, goal: float = ASR_GOAL) -> str:
        """``k/N``: how many of the N runs have an ASR of at least ``goal`` (a run without one counts as not)."""
        return f"{sum(1 for v in self.per_seed('attack_success_rate') if v is not None and v >= goal)}/{len(self.runs)}"

    @property
    def trigger(self) -> TriggerConfig:
        return self.runs[0].trigger


def seed_span(seeds: list[int]) -> str:
    """Sorted seeds with consecutive runs joined: ``0–2, 5``."""
    spans: list[list[int]] = []
    for s in sorted(seeds):
        if spans and s <= spans[-1][1] + 1:
            spans[-1][1] = s
        else:
            spans.append([s, s])
    return ", ".join(str(a) if a == b else f"{a}, {b}" if b == a + 1 else f"{a}–{b}" for a, b in spans)


def interval_note(groups: list[Group]) -> str:
    """What the ``±`` of a table of ``groups`` is, said only where there is one: ``mean ± 95 % CI
    over seeds`` (every config has 2+ seeds), ``one seed per config, no interval``, or ``mean ±
    95 % CI where a config has 2+ seeds``."""
    several = [len(g.runs) > 1 for g in groups]
    if several and all(several):
        return "mean ± 95 % CI over seeds"
    if not any(several):
        return "one seed per config, no interval"
    return "mean ± 95 % CI where a config has 2+ seeds"


IGNORED = {"seed", "data.root", "data.download", "train.device", "train.threads"}


def varying_keys(records: list[RunRecord]) -> list[str]:
    """Config keys (flattened, without seed) whose value differs between runs, in config order."""
    flats = [r.flat_config for r in records]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return [k for k in keys if k not in IGNORED and len({repr(f.get(k, "<unset>")) for f in flats}) > 1]


def group_columns(records: list[RunRecord]) -> list[str]:
    """The columns that tell groups apart: ``trigger`` (one label) if any trigger key varies,
    then every other varying key."""
    vary = varying_keys(records)
    cols = ["trigger"] if any(k.startswith("trigger.") for k in vary) else []
    return cols + [k for k in vary if not k.startswith("trigger.")]


def group_values(record: RunRecord, columns: list[str]) -> dict[str, Any]:
    flat = record.flat_config
    return {c: record.trigger.label if c == "trigger" else flat.get(c) for c in columns}


def aggregate(records: list[RunRecord]) -> tuple[list[str], list[Group]]:
    """Group runs by config minus seed; returns the distinguishing columns and the groups with
    ``stats[metric]`` a :class:`Stat` over its runs."""
    columns = group_columns(records)
    groups: dict[str, Group] = {}
    for r in records:
        flat = {k: v for k, v in r.flat_config.items() if k not in IGNORED}
        key = repr(sorted(flat.items(), key=lambda kv: kv[0]))
        groups.setdefault(key, Group(group_values(r, columns))).runs.append(r)
    out = list(groups.values())
    for g in out:
        for m in METRICS:
            g.stats[m] = mean_ci([r.metric(m) for r in g.runs])
    out.sort(
        key=lambda g: [(g.trigger.family, g.trigger.strength, g.trigger.label) if c == "trigger" else sortable(g.keys[c]) for c in columns]
    )
    return columns, out


def sortable(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, str(v))


def cell(stat: Stat, kind: str) -> str:
    """``mean ± ci`` as text (no ± for one value), with ``(n=k/N)`` when only k of the group's
    N runs have the metric."""
    text = (
        format_value(stat.mean, kind) if not math.isfinite(stat.ci) else f"{format_value(stat.mean, kind)} ± {format_value(stat.ci, kind)}"
    )
    return text if stat.n == stat.of else f"{text} (n={stat.n}/{stat.of})"


def to_markdown(columns: list[str], groups: list[Group], metrics: list[str] = TABLE_METRICS) -> str:
    """A Markdown table: distinguishing columns, seeds, then mean ± 95 % CI per metric."""
    head = [
        *columns,
        "seeds",
        *(METRICS[m].label for m in metrics),
        f"{METRICS['attack_success_rate'].label} per seed",
        f"ASR ≥ {100 * ASR_GOAL:g} %",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < len(columns) else "---:" for i in range(len(head))) + "|"]
    for g in groups:
        per_seed = _asr_per_seed(g, "pct")
        row = [str(g.keys[c]) for c in columns] + [g.seeds_text] + [cell(g.stats[m], METRICS[m].fmt) for m in metrics]
        lines.append("| " + " | ".join([*row, per_seed, g.reaching()]) + " |")
    return "\n".join(lines) + (
        f"\n\n{interval_sentence(groups)} Rates in % of test images, accuracy loss in points; "
        f"(n=k/N): only k of the N runs have that metric; ASR ≥ {100 * ASR_GOAL:g} %: how many of the seeds reach it.\n"
    )


def interval_sentence(groups: list[Group]) -> str:
    """:func:`interval_note` as the sentence under a table: what a cell holds."""
    note = interval_note(groups)
    if note.startswith("one seed"):
        return "One seed per config: each cell is that run's value (no interval from one seed)."
    where = "" if note.endswith("over seeds") else " (a config with one seed: its value alone)"
    return f"Mean ± half-width of the 95 % t-interval over the seeds listed{where}."


def _asr_per_seed(group: Group, kind: str) -> str:
    return " · ".join(format_value(v, kind) for v in group.per_seed("attack_success_rate"))


def pivot_markdown(columns: list[str], groups: list[Group], axis: str) -> str:
    """ASR with the values of one varying key (``axis``, e.g. ``poison.rate``) as the columns: a row
    per setting of the other keys, each cell the ASR of every seed (in seed order: a backdoor is
    often learned in some seeds and not others, which a mean hides) and how many reach the goal,
    ``–`` where that combination was not run. What ``perturbd report --pivot`` writes."""
    if axis not in columns:
        varying = ", ".join(columns) or "nothing (one config)"
        raise ConfigError(f"--pivot {axis}: not a key that varies between these runs; they vary in: {varying}")
    rest = [c for c in columns if c != axis]
    values = sorted({g.keys[axis] for g in groups}, key=sortable)
    rows: dict[tuple[Any, ...], dict[Any, Group]] = {}
    for g in groups:
        rows.setdefault(tuple(g.keys[c] for c in rest), {})[g.keys[axis]] = g
    head = [*rest, *(f"{axis} = {v}" for v in values)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < len(rest) else "---:" for i in range(len(head))) + "|"]
    for key, by_value in rows.items():
        cells = [f"{_asr_per_seed(hit, 'pct1')} ({hit.reaching()})" if (hit := by_value.get(v)) else "–" for v in values]
        lines.append("| " + " | ".join([*map(str, key), *cells]) + " |")
    return "\n".join(lines) + (
        f"\n\nASR % of the backdoored model per seed (seeds in order); (k/N): how many of the N seeds reach "
        f"ASR ≥ {100 * ASR_GOAL:g} %; –: not run.\n"
    )


def provenance(records: list[RunRecord], root: Path) -> str:
    """The lines that head a results table: how to remake it, and the code versions and machines
    its runs were made with (from each run's ``environment.json``), each with its count of runs."""

    def counted(values: list[str]) -> str:
        tally = Counter(values)
        return ", ".join(f"{v} ({n} runs)" if len(tally) > 1 else v for v, n in sorted(tally.items()))

    envs = [r.run.environment() for r in records]
    commits = [str(e.get("git_commit") or f"no commit, code digest {e.get('code_digest') or 'unrecorded'}")[:40] for e in envs]
    machines = [
        f"{e.get('cpu', 'CPU unrecorded')}, {e.get('device', '?')}, {e.get('threads', '?')} thread(s), torch {e.get('torch', '?')}"
        for e in envs
    ]
    name = Path(root).resolve().name
    lines = [f"Table: `perturbd report {name}` over its {len(records)} runs."]
    if (root / "sweep.yaml").is_file():
        lines.append(f"Runs: `perturbd sweep {name}/sweep.yaml` (resumable: finished runs are skipped).")
    lines += [f"Code: {counted(commits)}.", f"Machine: {counted(machines)}."]
    return "\n".join(lines) + "\n\n"


def to_csv(columns: list[str], groups: list[Group]) -> str:
    """One row per group: distinguishing columns, n, seeds, ``<metric>_mean``, ``<metric>_ci95``
    and ``<metric>_n`` (runs that have it) for every metric (fractions, not %)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*columns, "n", "seeds", *(f"{m}_{s}" for m in METRICS for s in ("mean", "ci95", "n")), "asr_per_seed", "asr_reaching_goal"])
    for g in groups:
        stats = [x for m in METRICS for x in (g.stats[m].mean, g.stats[m].ci, g.stats[m].n)]
        per_seed = " ".join("" if v is None else f"{v:.6g}" for v in g.per_seed("attack_success_rate"))
        cells = ("" if not math.isfinite(x) else f"{x:.6g}" for x in stats)
        w.writerow([*(g.keys[c] for c in columns), len(g.runs), " ".join(map(str, g.seeds)), *cells, per_seed, g.reaching()])
    return buf.getvalue()


def runs_csv(records: list[RunRecord]) -> str:
    """One row per run: its directory, varying config keys, seed and every metric."""
    vary = varying_keys(records)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run_dir", *vary, "seed", *METRICS])
    for r in records:
        flat = r.flat_config
        vals = [r.metric(m) for m in METRICS]
        w.writerow([r.path.name, *(flat.get(k) for k in vary), flat.get("seed"), *("" if v is None else f"{v:.6g}" for v in vals)])
    return buf.getvalue()
