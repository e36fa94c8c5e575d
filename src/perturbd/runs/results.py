"""A run's metrics as one typed object: what ``metrics.json`` holds and the rows people read.

:class:`RunMetrics` is built by :func:`perturbd.runs.experiment.evaluate`, written as
``metrics.json`` (:meth:`RunMetrics.to_json`), read back by the reports
(:meth:`RunMetrics.read`), and shown, row by row, by the console summary and the HTML report
(:meth:`RunMetrics.rows`). The metric definitions are in :mod:`perturbd.metrics`; rates are
fractions in [0, 1], norms in pixel units of the 0–255 scale.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

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

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.json`` mapping: every field, less the optional parts this run has not
        (floats kept as they are: an image left unchanged has an infinite PSNR)."""
        optional = {"sources", "non_source_asr", "clean_model_non_source_asr", "before_update", "update", "defenses"}
        return {k: v for k, v in self.model_dump().items() if v is not None or k not in optional}

    @classmethod
    def read(cls, run_dir: Path) -> RunMetrics:
        """The metrics of a run directory; a one-line :class:`DataError` if they cannot be read
        (a missing or corrupt file, or metrics written by another perturbd version)."""
        path = Path(run_dir) / "metrics.json"
        try:
            return cls.model_validate(read_json(path))
        except (OSError, ValueError) as err:
            if isinstance(err, ValidationError):
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "metrics"
                raise DataError(f"{path} is not a perturbd run's metrics ({where}: {first['msg']}); it was written by another version: rerun it with --force") from None
            raise DataError(f"cannot read {path} ({err}); rerun the run with --force") from None

    def rows(self) -> list[tuple[str, str]]:
        """``(what, value)`` for people: the console summary and the HTML report show these."""
        s, t = self.stealth, self.trigger
        rows = [
            ("clean accuracy (backdoored)", pct(self.clean_accuracy)),
            ("clean accuracy (clean twin)", pct(self.clean_twin_accuracy)),
            ("accuracy loss", f"{100 * self.accuracy_loss:+.2f} points"),
            ("attack success rate" + (f" (sources {self.sources})" if self.sources is not None else ""), pct(self.attack_success_rate)),
            ("clean-model ASR", pct(self.clean_model_asr)),
            ("injection rate", f"{pct(self.injection_rate)} ({self.poisoned_count} of {self.poison_set_size} images)"),
            ("trigger L∞ / L2 (0–255)", f"{t.linf:.1f} / {t.l2:.1f}"),
            ("PSNR mean / worst", f"{s.psnr_mean:.1f} / {s.psnr_min:.1f} dB"),
            ("SSIM mean / worst", f"{s.ssim_mean:.4f} / {s.ssim_min:.4f}"),
            ("setting / knowledge", f"{self.setting} / {self.knowledge}"),
            ("seed", str(self.seed)),
        ]
        if self.sources is not None:
            rows.insert(5, ("other classes sent to the target (backdoored / clean)", f"{pct(self.non_source_asr)} / {pct(self.clean_model_non_source_asr)}"))
        if self.before_update is not None:
            b = self.before_update
            rows.insert(0, ("before update: accuracy / ASR", f"{pct(b.clean_accuracy)} / {pct(b.attack_success_rate)}"))
        for name, cell in (self.defenses or {}).items():
            rows.append((f"defense {name}", str(cell.get("text", ""))))
        return rows


def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals; ``–`` when there is none."""
    return f"{100 * x:.2f} %" if isinstance(x, (int, float)) and math.isfinite(x) else "–"
