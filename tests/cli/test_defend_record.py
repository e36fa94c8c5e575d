"""``perturbd defend`` on a run directory: results accumulate in the run's ``defenses.json`` per
defence and parameters (the same again is skipped, ``--rerun`` replaces it), reach the run's
``report.html`` and matrix, and carry the removal metrics (R-Acc, DER, clean images, wall time)."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from perturbd.cli import app, main
from perturbd.runs.results import REMOVAL

FT = ["-d", "fine_tuning", "-p", "n_clean=50"]


def _record(run: Path) -> list[dict]:
    return json.loads((run / "defenses.json").read_text())["defenses"]


def _defend(*args: str) -> str:
    res = CliRunner().invoke(app, ["defend", *args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture
def run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the session's run directory (which the experiment defended with fine_tuning,
    n_clean 50, 1 epoch), so that this test's writes stay here."""
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


def test_results_accumulate_per_defence_and_parameters(run: Path) -> None:
    first = _record(run)
    out = _defend(str(run), *FT, "-p", "epochs=1")
    assert "already in defenses.json with these parameters" in out and "nothing new" in " ".join(out.split())
    assert _record(run) == first, "the experiment's own fine_tuning run: skipped, the file untouched"

    _defend(str(run), *FT, "-p", "epochs=2")
    second = _record(run)
    assert second[: len(first)] == first, "the earlier entries kept as they were"
    added = second[-1]
    assert len(second) == len(first) + 1 and added["params"]["epochs"] == 2 and isinstance(added["when"], str)
    m = added["metrics"]
    assert {"robust_accuracy_before", "robust_accuracy_after", "der", "clean_images_used", "seconds"} <= set(m)
    assert m["clean_images_used"] == 50 and 0 < m["seconds"] <= added["seconds"] and 0 <= m["der"] <= 1

    _defend(str(run), *FT, "-p", "epochs=2", "--rerun")
    third = _record(run)
    assert len(third) == len(second) and third[-1]["when"] >= added["when"], "--rerun replaces its entry"

    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    page = (run / "report.html").read_text()
    assert "<h2>Defences</h2>" in page and REMOVAL["robust_accuracy_after"].label in page and REMOVAL["der"].label in page
    assert "fine_tuning [epochs=1]" in page and "fine_tuning [epochs=2]" in page and "spectral_signature" in page
    rows = list(csv.DictReader((run / "matrix.csv").open()))
    assert {"fine_tuning [epochs=1]_der", "fine_tuning [epochs=2]_robust_accuracy", "fine_tuning [epochs=2]_seconds"} <= set(rows[0])
    assert rows[0]["fine_tuning [epochs=2]_clean_images_used"] == "50"


def test_a_file_there_that_is_not_a_record_stops_before_any_work(run: Path, monkeypatch, capsys) -> None:
    (run / "defenses.json").write_text('{"defenses": {"not": "a list"}}')
    monkeypatch.setattr(sys, "argv", ["perturbd", "defend", str(run), *FT])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "is not a perturbd defences record" in err and len(err.splitlines()) == 1
    assert (run / "defenses.json").read_text() == '{"defenses": {"not": "a list"}}'
