"""A run folder as one type: :class:`RunDir` is the only code that knows the names of a run's files.

The folder ``<out>/<name>-<confighash8>/`` that :func:`perturbd.runs.experiment.run` writes holds
(as :class:`RunDir`'s constants name them): the config (``config.yaml``), the metrics
(``metrics.json``, :class:`~perturbd.runs.results.RunMetrics`), the trigger
(``trigger.safetensors``, and ``trigger.png`` to look at), poisoned samples (``samples.png``), both
models (``model.safetensors``, ``clean_model.safetensors``), the poison's positions
(``poison_indices.json``), what the adversary had (``adversary.json``), the machine and code that
made it (``environment.json``), seconds per stage (``timing.json``), the run's log (``log.txt``);
when defences ran, their report (``defenses.json``), their figures (named by each defence) and the
one-row attack × defence matrix (``matrix.md``, ``matrix.csv``); ``perturbd report`` adds
``report.html``.

The layout is versioned: ``environment.json`` records its ``format`` (:data:`FORMAT`); a folder
without one was written before formats were recorded and is format 1, today's layout. A folder of a
newer format than this code reads is refused in one line (:meth:`RunDir.check_format`).

Loading a run's weights and trigger needs torch; those readers are in :mod:`perturbd.runs.saved`
(this module stays light: the command line imports it before torch).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from perturbd.config import (
    LEGACY_TRIGGER_DEFAULTS,
    ExperimentConfig,
    TriggerConfig,
    apply_overrides,
    config_hash,
    dump_yaml,
    foreign_legacy_keys,
    legacy_trigger_section,
    legacy_value,
    read_yaml,
    validate,
)
from perturbd.errors import ConfigError, DataError
from perturbd.provenance import git_commit
from perturbd.runs.results import PoisonRecord, RunMetrics, StoredMetrics
from perturbd.runs.rundir import read_json, write_json
from perturbd.trigger_params import params_of
from perturbd.trust import check_code, override_keys
from perturbd.version import __version__

#: the run-folder format this code writes and the newest it reads (1: the layout described above)
FORMAT = 1


class RunDir:
    """One run folder: its files' names and paths, typed readers and the writers of its records.

    Readers of a file that is missing or corrupt raise a one-line :class:`DataError` (or
    :class:`ConfigError` for the config), as does a folder of a format newer than :data:`FORMAT`;
    :meth:`stored_metrics` is the tolerant reader of the metrics (it says what is wrong instead).
    """

    CONFIG = "config.yaml"
    METRICS = "metrics.json"
    TRIGGER = "trigger.safetensors"
    TRIGGER_PNG = "trigger.png"
    SAMPLES_PNG = "samples.png"
    MODEL = "model.safetensors"
    CLEAN_MODEL = "clean_model.safetensors"
    POISON_INDICES = "poison_indices.json"
    ADVERSARY = "adversary.json"
    ENVIRONMENT = "environment.json"
    TIMING = "timing.json"
    LOG = "log.txt"
    DEFENSES = "defenses.json"
    MATRIX = "matrix"  # the stem of matrix.md and matrix.csv
    MATRIX_MD = "matrix.md"
    MATRIX_CSV = "matrix.csv"
    REPORT = "report.html"
    #: every file name above: what no module outside perturbd.runs may spell
    NAMES = (
        CONFIG, METRICS, TRIGGER, TRIGGER_PNG, SAMPLES_PNG, MODEL, CLEAN_MODEL, POISON_INDICES, ADVERSARY,
        ENVIRONMENT, TIMING, LOG, DEFENSES, MATRIX_MD, MATRIX_CSV, REPORT,
    )  # fmt: skip
    #: the two models: what a run kept without its weights lacks
    WEIGHTS = (MODEL, CLEAN_MODEL)

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def trigger_path(self) -> Path:
        return self.path / self.TRIGGER

    @property
    def trigger_png(self) -> Path:
        return self.path / self.TRIGGER_PNG

    @property
    def samples_png(self) -> Path:
        return self.path / self.SAMPLES_PNG

    @property
    def model_path(self) -> Path:
        return self.path / self.MODEL

    @property
    def clean_model_path(self) -> Path:
        return self.path / self.CLEAN_MODEL

    @property
    def poison_indices_path(self) -> Path:
        return self.path / self.POISON_INDICES

    @property
    def environment_path(self) -> Path:
        return self.path / self.ENVIRONMENT

    @property
    def defenses_path(self) -> Path:
        return self.path / self.DEFENSES

    @property
    def report_path(self) -> Path:
        return self.path / self.REPORT

    # what the folder is

    def is_run(self) -> bool:
        """Whether this is a finished run's folder: it holds its config and its metrics."""
        return self.config_path.is_file() and self.metrics_path.is_file()

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def has_weights(self) -> bool:
        """Whether the run holds both its models (:attr:`WEIGHTS`)."""
        return all(self.has(name) for name in self.WEIGHTS)

    def missing(self, names: tuple[str, ...]) -> list[str]:
        """Those of ``names`` that the folder lacks."""
        return [name for name in names if not self.has(name)]

    @property
    def format(self) -> int:
        """The folder's format: ``environment.json``'s ``format``, 1 where it records none."""
        env = self._json_or_none(self.ENVIRONMENT)
        value = env.get("format", 1) if isinstance(env, dict) else 1
        return value if isinstance(value, int) and not isinstance(value, bool) else 1

    def check_format(self) -> None:
        """A one-line :class:`DataError` if the folder is of a format newer than :data:`FORMAT`."""
        if self.format > FORMAT:
            raise DataError(
                f"{self.path} is a run folder of format {self.format}; this perturbd ({__version__}) reads format {FORMAT} and older: "
                "upgrade perturbd"
            )

    def check_finished(self) -> None:
        """A one-line :class:`ConfigError` unless this is a finished run's folder of a known format."""
        missing = self.missing((self.CONFIG, self.METRICS))
        if missing:
            what = "no such folder" if not self.path.is_dir() else f"it has no {' and no '.join(missing)}"
            raise ConfigError(f"{self.path} is not a finished run directory ({what}); give a folder written by `perturbd run`")
        self.check_format()

    # readers

    def config(self, overrides: list[str] | None = None, *, trust_code: bool = False) -> ExperimentConfig:
        """The run's config (:meth:`stored_config`, with ``overrides``, e.g. ``data.root=DIR`` on
        another machine); a one-line :class:`ConfigError` if the folder is not a finished run's."""
        self.check_finished()
        return self.stored_config(overrides, trust_code=trust_code)

    def stored_config(self, overrides: list[str] | None = None, *, trust_code: bool = False) -> ExperimentConfig:
        """The config in the folder, with ``overrides``, to rebuild the run from. Keys of the old
        flat trigger section that the run's kind does not take are dropped, at any value: an older
        version wrote every kind's (a sweep crossing kinds, ``kind: grid`` with ``budget: 3``), and
        they never took part in the run (in a config a user writes they stay an error:
        :func:`perturbd.config.load_config`). The run may then hash differently today
        (:meth:`hash_note`). A config that names code to run (``factory:``, ``torchscript:``) in a
        key ``overrides`` do not set is refused unless ``trust_code`` (:func:`perturbd.trust.check_code`:
        the folder may come from anyone). Any mistake is a one-line :class:`ConfigError`."""
        self.check_format()
        data, _ = self._stored()
        cfg = validate(apply_overrides(data, overrides or []))
        if not trust_code:
            check_code(cfg, self.config_path, mine=override_keys(overrides or []))
        return cfg

    def _stored(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The config mapping without the foreign keys of the old flat trigger section, and those."""
        data = read_yaml(self.config_path)
        section = data.get("trigger")
        if not isinstance(section, dict):
            return data, {}
        dropped = {k: section[k] for k in foreign_legacy_keys(section)}
        return {**data, "trigger": {k: v for k, v in section.items() if k not in dropped}}, dropped

    def hash_note(self) -> str | None:
        """``None`` if the run's config (:meth:`stored_config`) hashes today as recorded when it ran
        (``metrics.json``'s ``config_hash``); otherwise one line saying so and why. What is made
        from the config (a retrain by ``perturbd reproduce``) is written under today's hash."""
        metrics = self._json_or_none(self.METRICS)
        recorded = metrics.get("config_hash") if isinstance(metrics, dict) else None
        data, dropped = self._stored()
        cfg = validate(data)
        today = cfg.hash()
        if not isinstance(recorded, str) or recorded == today:
            return None
        try:
            flat = {k: legacy_value(k, v) for k, v in dropped.items()}
        except ValidationError:
            flat = dropped
        then = config_hash(cfg, {"trigger": {**legacy_trigger_section(cfg.trigger), **flat}})
        if dropped and then == recorded:
            keys = ", ".join(f"trigger.{k}={v!r}" for k, v in flat.items() if v != LEGACY_TRIGGER_DEFAULTS[k])
            why = f"it was hashed with {keys}, which kind '{cfg.trigger.kind}' does not take (dropped: it never took part in the run)"
        else:
            why = "its config.yaml is not the one it ran with"
        return f"{self.path} was run under config hash {recorded}; {why}: today it hashes {today}, and a retrain is written under {today}"

    def settings(self) -> dict[str, Any]:
        """The run's config as the mapping written (unvalidated: a report groups runs of other
        perturbd versions by it too)."""
        self.check_format()
        data = read_yaml(self.config_path)
        return data if isinstance(data, dict) else {}

    def trigger_config(self) -> TriggerConfig:
        """The trigger section of the run's config (see :func:`trigger_section`)."""
        return trigger_section(self.settings())

    def metrics(self) -> RunMetrics:
        """The run's metrics (:meth:`RunMetrics.from_file`)."""
        self.check_format()
        return RunMetrics.from_file(self.metrics_path)

    def stored_metrics(self) -> StoredMetrics:
        """The run's metrics as written, read tolerantly (:class:`StoredMetrics`): what the
        reports of a folder of runs and ``perturbd reproduce`` read, so that a run of another
        perturbd version is shown with what it has instead of failing the whole report."""
        self.check_format()
        return StoredMetrics.from_file(self.metrics_path)

    def poison_indices(self) -> PoisonRecord:
        """Which training images were poisoned, their labels before, and the target."""
        return PoisonRecord.from_file(self.poison_indices_path)

    def environment(self) -> dict[str, Any]:
        """Versions, device, CPU and commit that made the run (``{}`` if unreadable)."""
        data = self._json_or_none(self.ENVIRONMENT)
        return data if isinstance(data, dict) else {}

    def adversary(self) -> dict[str, Any] | None:
        """What the adversary had and did (``None`` if the folder does not say)."""
        data = self._json_or_none(self.ADVERSARY)
        return data if isinstance(data, dict) else None

    def timing(self) -> dict[str, Any]:
        """Seconds per stage of the run (``{}`` if unreadable)."""
        data = self._json_or_none(self.TIMING)
        return data if isinstance(data, dict) else {}

    def defenses(self) -> dict[str, Any]:
        """``defenses.json``: the clean source, the code that defended, one report per defence and
        parameters (:mod:`perturbd.evaluation.record`); a one-line :class:`DataError` if no
        defence ran on this run."""
        if not self.defenses_path.is_file():
            raise DataError(f"{self.path} has no {self.DEFENSES}; run it with `defenses: [...]` in its config")
        try:
            data = read_json(self.defenses_path)
        except (OSError, ValueError) as err:
            raise DataError(f"{self.defenses_path} cannot be read ({type(err).__name__}: {err}); rerun the run with --force") from None
        return data if isinstance(data, dict) else {}

    def config_text(self) -> str:
        return self._text_or_none(self.CONFIG) or ""

    def log(self) -> str:
        return self._text_or_none(self.LOG) or ""

    def _json_or_none(self, name: str) -> Any:
        try:
            return read_json(self.path / name)
        except (OSError, ValueError):
            return None

    def _text_or_none(self, name: str) -> str | None:
        try:
            return (self.path / name).read_text()
        except OSError:
            return None

    # writers (into a folder being made: see perturbd.runs.rundir.atomic_dir)

    def write_config(self, cfg: ExperimentConfig) -> None:
        self.config_path.write_text(dump_yaml(cfg))

    def write_metrics(self, metrics: RunMetrics) -> None:
        write_json(self.metrics_path, metrics.to_json())

    def write_poison_indices(self, record: PoisonRecord) -> None:
        write_json(self.poison_indices_path, record.to_json())

    def write_environment(self, env: dict[str, Any]) -> None:
        """``environment.json``: ``env`` and the folder's :data:`FORMAT`."""
        write_json(self.environment_path, {**env, "format": FORMAT})

    def write_adversary(self, record: dict[str, Any]) -> None:
        write_json(self.path / self.ADVERSARY, record)

    def write_timing(self, seconds: dict[str, float]) -> None:
        write_json(self.path / self.TIMING, seconds)

    def write_defenses(self, record: dict[str, Any]) -> None:
        """``defenses.json``, replaced whole at once (written beside it, then renamed): results
        accumulate in it (:mod:`perturbd.evaluation.record`), and an interrupted write must not
        lose the earlier ones."""
        part = self.defenses_path.with_name(f".{self.DEFENSES}.part")
        write_json(part, record)
        os.replace(part, self.defenses_path)

    def write_log(self, lines: list[str]) -> None:
        (self.path / self.LOG).write_text("\n".join(lines) + "\n")

    # which code made it

    def other_code(self) -> str | None:
        """``None`` if the run was made by this perturbd version and commit; otherwise which code
        made it, against this one, in one line."""
        env = self._json_or_none(self.ENVIRONMENT)
        if not isinstance(env, dict):
            return f"{self.path} has no readable {self.ENVIRONMENT}: which code made it is unknown"
        then = (env.get("perturbd"), env.get("git_commit"))
        now = (__version__, git_commit())
        if then == now:
            return None

        def name(version: str | None, commit: str | None) -> str:
            return f"perturbd {version}" + (f" at {commit[:10]}" if commit else "")

        return f"{self.path} was made by {name(*then)}, this is {name(*now)}"

    def made_elsewhere(self) -> str | None:
        """``None`` if the run was made by this perturbd version and commit; otherwise one line
        saying which code made it (a reused run measures what *that* code did) and that
        ``--force`` redoes it."""
        other = self.other_code()
        if other is None:
            return None
        return other + ("; --force redoes it" if other.endswith("unknown") else "; --force redoes it with this code")


def trigger_section(config: dict[str, Any]) -> TriggerConfig:
    """The ``trigger`` section of a run's config mapping as a :class:`TriggerConfig`; keys its kind
    does not take are left out, so a config written by another version still reads (the one
    tolerant reader of an old run's config)."""
    section = config.get("trigger") or {}
    known = {"kind", "psnr", "ssim", *params_of(str(section.get("kind", "grid"))).model_fields}
    trigger: TriggerConfig = validate({k: v for k, v in section.items() if k in known}, TriggerConfig)
    return trigger


def run_dirs(root: Path) -> Iterator[RunDir]:
    """``root`` if it is a run folder, else every run folder below it (hidden folders such as
    ``.twins`` and ``.tmp-*`` skipped), sorted by path."""
    top = RunDir(root)
    if top.is_run():
        yield top
        return
    for metrics in sorted(top.path.rglob(RunDir.METRICS)):
        rel = metrics.parent.relative_to(top.path)
        run = RunDir(metrics.parent)
        if not any(part.startswith(".") for part in rel.parts) and run.is_run():
            yield run
