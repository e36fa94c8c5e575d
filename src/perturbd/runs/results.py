"""A run's metrics as one typed object, and the one table of how every report names and shows them.

:class:`RunMetrics` is built by :func:`perturbd.runs.experiment.evaluate`, written into the run
folder (:meth:`RunMetrics.to_json`, through :class:`~perturbd.runs.folder.RunDir`), read back
(:meth:`~perturbd.runs.folder.RunDir.metrics`), and shown, row by row, by the console summary and
the HTML report (:meth:`RunMetrics.rows`). The aggregated reports read a folder of runs
tolerantly (:class:`StoredMetrics`, :meth:`~perturbd.runs.folder.RunDir.stored_metrics`): a run
that another perturbd version wrote shows the metrics it has. :data:`METRICS` is the metric table
(key, label, short label, unit, format, where it is in a :class:`RunMetrics` and in
``metrics.json``) that the aggregated tables, the console and the HTML report all use. The metric definitions are in
:mod:`perturbd.metrics`; rates are fractions in [0, 1], norms in pixel units of the 0–255 scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from perturbd.errors import DataError
from perturbd.runs.rundir import read_json


class Record(BaseModel):
    """Base of the parts of ``metrics.json``: unknown keys are errors, values are final."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TriggerNorms(Record):
    kind: str
    linf: float
    l2: float


class Stealth(Record):
    """Distortion of the poisoned images (see :func:`perturbd.metrics.stealth`)."""

    linf_mean: float
    linf_max: float
    l2_mean: float
    l2_max: float
    psnr_mean: float
    psnr_min: float
    ssim_mean: float
    ssim_min: float


class Restated(Record):
    """A metric recomputed after the run on the very images the run measured it on (their PSNR
    recomputed equal to the stored one): ``commit``, the code that recomputed it; ``variant``, the
    definition it now follows (``wang2004-valid``: :func:`perturbd.metrics.ssim_each`). Written by
    ``tools/restate_ssim.py`` for runs measured before the SSIM changed definition (commit 7d9401d)."""

    commit: str
    variant: str


class BeforeUpdate(Record):
    """The update setting: the pre-update model on the clean test set and with the trigger."""

    clean_accuracy: float
    attack_success_rate: float


class UpdateFacts(Record):
    """The update setting: what was fine-tuned, on what, how."""

    batch_size: int
    batch: str
    initial_train_size: int | None
    epochs: int
    lr: float
    pre_update_model: str
    checkpoint_sha256: str | None


class RunMetrics(Record):
    """The metrics of one run (DESIGN.md's table) and the facts needed to read them."""

    config_hash: str
    seed: int
    setting: str
    knowledge: str
    target: int
    clean_accuracy: float
    clean_twin_accuracy: float
    accuracy_loss: float
    attack_success_rate: float
    clean_model_asr: float
    injection_rate: float
    poisoned_count: int
    poison_set_size: int
    test_size: int
    trigger: TriggerNorms
    stealth: Stealth
    sources: list[int] | None = None
    non_source_asr: float | None = None
    clean_model_non_source_asr: float | None = None
    before_update: BeforeUpdate | None = None
    update: UpdateFacts | None = None
    defenses: dict[str, dict[str, Any]] | None = None
    #: set where the stored SSIM was recomputed after the run (:class:`Restated`)
    ssim_restated: Restated | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.json`` mapping: every field, less the optional parts this run has not
        (floats kept as they are: an image left unchanged has an infinite PSNR)."""
        optional = {"sources", "non_source_asr", "clean_model_non_source_asr", "before_update", "update", "defenses", "ssim_restated"}
        return {k: v for k, v in self.model_dump().items() if v is not None or k not in optional}

    @classmethod
    def from_file(cls, path: Path) -> RunMetrics:
        """The metrics in the file ``path`` (a run folder's: :meth:`~perturbd.runs.folder.RunDir.metrics`);
        a one-line :class:`DataError` if they cannot be read (a missing or corrupt file, or metrics
        written by another perturbd version)."""
        return _read_record(cls, Path(path), "metrics")

    def rows(self) -> list[tuple[str, str]]:
        """``(what, value)`` for people: the console summary and the HTML report show these."""
        s, t = self.stealth, self.trigger
        acc, loss, asr, twin_asr, rate = (
            METRICS[k] for k in ("clean_accuracy", "accuracy_loss", "attack_success_rate", "clean_model_asr", "injection_rate")
        )
        rows = [
            (f"{acc.name} (backdoored)", acc.show(self)),
            (f"{acc.name} (clean twin)", pct(self.clean_twin_accuracy)),
            (loss.name, loss.show(self)),
            (asr.name + (f" (sources {self.sources})" if self.sources is not None else ""), asr.show(self)),
            (twin_asr.name, twin_asr.show(self)),
            (rate.name, f"{rate.show(self)} ({self.poisoned_count} of {self.poison_set_size} images)"),
            ("trigger L∞ / L2 (0–255)", f"{t.linf:.1f} / {t.l2:.1f}"),
            ("PSNR mean / worst", f"{s.psnr_mean:.1f} / {s.psnr_min:.1f} dB"),
            (
                "SSIM mean / worst" + (f" (restated at {r.commit[:10]})" if (r := self.ssim_restated) else ""),
                f"{s.ssim_mean:.4f} / {s.ssim_min:.4f}",
            ),
            ("setting / knowledge", f"{self.setting} / {self.knowledge}"),
            ("seed", str(self.seed)),
        ]
        if self.sources is not None:
            rows.insert(
                5,
                (
                    "other classes sent to the target (backdoored / clean)",
                    f"{pct(self.non_source_asr)} / {pct(self.clean_model_non_source_asr)}",
                ),
            )
        if self.before_update is not None:
            b = self.before_update
            rows.insert(0, ("before update: accuracy / ASR", f"{pct(b.clean_accuracy)} / {pct(b.attack_success_rate)}"))
        for name, cell in (self.defenses or {}).items():
            rows.append((f"defense {name}", str(cell.get("text", ""))))
        return rows


def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals; ``–`` when there is none."""
    return f"{100 * x:.2f} %" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


class PoisonRecord(Record):
    """Which images of the poisoned set were poisoned (positions), their labels before, the target;
    ``noise_indices``: images transformed but kept at their label (wanet's noise mode)."""

    indices: list[int]
    original_labels: list[int]
    target: int
    noise_indices: list[int] = []

    def to_json(self) -> dict[str, Any]:
        """The mapping written: ``noise_indices`` only where there are some."""
        return self.model_dump(exclude=set() if self.noise_indices else {"noise_indices"})

    @classmethod
    def from_file(cls, path: Path) -> PoisonRecord:
        """The record in the file ``path``; a one-line :class:`DataError` if it cannot be read."""
        return _read_record(cls, Path(path), "poison record")


R = TypeVar("R", bound=Record)


def _read_record(cls: type[R], path: Path, what: str) -> R:
    try:
        return cls.model_validate(read_json(path))
    except (OSError, ValueError) as err:
        raise DataError(_unread(err, path, what)) from None


def _unread(err: OSError | ValueError, path: Path, what: str) -> str:
    """Why the record ``what`` in ``path`` does not read (``err``), in one line."""
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or what
        return f"{path} is not a perturbd run's {what} ({where}: {first['msg']}); it was written by another version: rerun it with --force"
    return f"cannot read {path} ({err}); rerun the run with --force"


@dataclass(frozen=True)
class StoredMetrics:
    """A run's ``metrics.json`` read tolerantly: the one reader of metrics that another perturbd
    version wrote (or that cannot be read at all).

    ``data``: the mapping as written, unvalidated (``{}`` if the file cannot be read as a JSON
    mapping); ``problem``: why it does not read as today's :class:`RunMetrics`, in one line
    (``None``: it does). The reports show such a run with the metrics it has (one it lacks is
    blank, :meth:`value` ``None``); ``perturbd reproduce`` compares the numbers it holds.
    """

    data: dict[str, Any]
    problem: str | None = None

    @classmethod
    def from_file(cls, path: Path) -> StoredMetrics:
        path = Path(path)
        try:
            raw = read_json(path)
        except (OSError, ValueError) as err:
            return cls({}, _unread(err, path, "metrics"))
        data = raw if isinstance(raw, dict) else {}
        try:
            RunMetrics.model_validate(raw)
        except ValidationError as err:
            return cls(data, _unread(err, path, "metrics"))
        return cls(data)

    def value(self, name: str) -> float | None:
        """The metric ``name`` (a key of :data:`METRICS`) as stored; ``None`` where there is none."""
        return METRICS[name].find(self.data)


def format_value(value: float | None, fmt: str) -> str:
    """``value`` as text in format ``fmt``: ``pct`` (a fraction in % with 2 decimals), ``pct1``
    (1 decimal), ``int``, ``num3`` (4 decimals), else 2 decimals; ``–`` for none or NaN, ``∞``."""
    if value is None or not math.isfinite(value):
        return "–" if value is None or math.isnan(value) else ("∞" if value > 0 else "-∞")
    return {"pct": f"{100 * value:.2f}", "pct1": f"{100 * value:.1f}", "int": f"{value:.0f}", "num3": f"{value:.4f}"}.get(
        fmt, f"{value:.2f}"
    )


@dataclass(frozen=True)
class Metric:
    """One reported metric: ``key`` (its column in ``aggregate.csv`` / ``runs.csv``), ``name``
    (in words), ``label`` (table header), ``short`` (header on a narrow terminal), ``legend`` (what
    ``short`` stands for, where it needs saying), ``unit`` (of the value stored), ``fmt`` (how
    tables show it: see :func:`format_value`), ``path`` (where it is in a :class:`RunMetrics` and
    in ``metrics.json``: ``stealth.psnr_mean``)."""

    key: str
    name: str
    label: str
    short: str
    unit: str
    fmt: str
    path: str
    legend: str = ""

    def value(self, metrics: RunMetrics) -> float:
        return float(attrgetter(self.path)(metrics))

    def find(self, data: dict[str, Any]) -> float | None:
        """The value in a ``metrics.json`` mapping as written (:class:`StoredMetrics`): ``None``
        where it has none (a run of another version that lacks the metric)."""
        node: Any = data
        for part in self.path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None

    def text(self, value: float | None) -> str:
        """``value`` as a table cell (no unit: the header says it)."""
        return format_value(value, self.fmt)

    def show(self, metrics: RunMetrics) -> str:
        """The value in ``metrics`` for people, with its unit: ``12.34 %``, ``+0.50 points``."""
        value = self.value(metrics)
        if self.unit == "fraction difference":
            return f"{100 * value:+.2f} points"
        return pct(value) if self.fmt == "pct" else f"{self.text(value)} {self.unit}".strip()


def _metric(key: str, name: str, label: str, short: str, unit: str, fmt: str, path: str, legend: str = "") -> Metric:
    return Metric(key, name, label, short, unit, fmt, path, legend)


#: the metric table, in column order: every report and the console name and format metrics from it
METRICS: dict[str, Metric] = {m.key: m for m in (
    _metric("clean_accuracy", "clean accuracy", "clean acc. %", "acc %", "fraction", "pct", "clean_accuracy", "acc: clean accuracy"),
    _metric("accuracy_loss", "accuracy loss", "acc. loss (points)", "loss pts", "fraction difference", "pct", "accuracy_loss",
            "loss: accuracy loss"),
    _metric("attack_success_rate", "attack success rate", "ASR %", "ASR %", "fraction", "pct", "attack_success_rate"),
    _metric("clean_model_asr", "clean-model ASR", "clean-model ASR %", "twin ASR %", "fraction", "pct", "clean_model_asr",
            "twin ASR: clean-model ASR"),
    _metric("injection_rate", "injection rate", "injection %", "inj %", "fraction", "pct", "injection_rate", "inj: injection rate"),
    _metric("poisoned_count", "poisoned images", "poisoned", "poisoned", "images", "int", "poisoned_count"),
    _metric("trigger_linf", "trigger L∞", "L∞", "L∞", "pixel units (0–255)", "num", "trigger.linf"),
    _metric("trigger_l2", "trigger L2", "L2", "L2", "pixel units (0–255)", "num", "trigger.l2"),
    _metric("psnr_mean", "PSNR mean", "PSNR dB", "PSNR", "dB", "num", "stealth.psnr_mean"),
    _metric("ssim_mean", "SSIM mean", "SSIM", "SSIM", "", "num3", "stealth.ssim_mean"),
)}  # fmt: skip

#: the removal metrics of a mitigation (:mod:`perturbd.metrics`; DESIGN.md's "removal" row), as
#: its metrics in ``defenses.json`` hold them (``path``: the key there): the console, the run's
#: HTML report and the matrix name and format them from this table. Rates are fractions of the
#: test images: the ASR and R-Acc over the triggered images of the source classes (every class but
#: the target unless ``poison.sources`` is set).
REMOVAL: dict[str, Metric] = {m.key: m for m in (
    _metric("clean_accuracy_before", "clean accuracy before", "acc. before %", "acc0 %", "fraction", "pct", "clean_accuracy_before"),
    _metric("clean_accuracy_after", "clean accuracy after", "acc. after %", "acc %", "fraction", "pct", "clean_accuracy_after"),
    _metric("accuracy_cost", "accuracy cost (before − after)", "acc. cost (points)", "cost pts", "fraction difference", "pct",
            "accuracy_cost", "cost: clean accuracy before − after"),
    _metric("asr_before", "ASR before", "ASR before %", "ASR0 %", "fraction", "pct1", "asr_before"),
    _metric("asr_after", "ASR after", "ASR after %", "ASR %", "fraction", "pct1", "asr_after"),
    _metric("robust_accuracy_before", "robust accuracy before", "R-Acc before %", "R-Acc0 %", "fraction", "pct1", "robust_accuracy_before"),
    _metric("robust_accuracy_after", "robust accuracy after (R-Acc)", "R-Acc %", "R-Acc %", "fraction", "pct1", "robust_accuracy_after",
            "R-Acc: triggered images classified as their true label"),
    _metric("der", "defence effectiveness rating (DER)", "DER", "DER", "", "num3", "der",
            "DER: [max(0, ΔASR) − max(0, ΔAcc) + 1] / 2"),
    _metric("clean_images_used", "clean images used", "clean images", "clean", "images", "int", "clean_images_used"),
    _metric("seconds", "defence wall time", "wall time (s)", "s", "s", "num", "seconds"),
)}  # fmt: skip

#: the defence kinds measured with :data:`REMOVAL`: a mitigation, and a training-time defence
#: (measured against the model trained plainly)
REMOVAL_KINDS = ("mitigation", "training")
