"""The console tables: a run's summary shows RunMetrics.rows(); the sweep table; `perturbd report`."""

from __future__ import annotations

import pytest
from rich.console import Console
from typer.testing import CliRunner

from perturbd.cli import app
from perturbd.report.build import build_report
from perturbd.report.console import aggregate_table, summary_table
from perturbd.runs.folder import RunDir
from perturbd.runs.results import BeforeUpdate


def cells(table) -> list[tuple[str, ...]]:
    return list(zip(*(col.cells for col in table.columns)))


def test_summary_shows_the_rows_of_run_metrics(runs):
    run = next(p for p in runs.iterdir() if not p.name.startswith("."))
    metrics = RunDir(run).metrics()
    assert cells(summary_table(metrics, run)) == metrics.rows()
    updated = metrics.model_copy(update={"before_update": BeforeUpdate(clean_accuracy=0.97, attack_success_rate=0.02)})
    assert cells(summary_table(updated, run))[0] == ("before update: accuracy / ASR", "97.00 % / 2.00 %")


def test_aggregate_table_has_the_label_column_and_mean_ci(runs):
    rep = build_report(runs)
    console = Console(record=True, width=220)
    console.print(aggregate_table(rep, "sweep"))
    text = console.export_text()
    assert "trigger" in text and "poison.rate" in text and "grid c=6" in text and "18.50 ± 6.35" in text


@pytest.mark.parametrize("width", [60, 80, 100])
def test_aggregate_table_is_readable_when_narrow(runs, width):
    """No header or value cut short ("…") at 80 columns: short headers, explained, then fewer
    columns; narrower still, the least-needed metrics are left out and said so."""
    rep = build_report(runs)
    console = Console(record=True, width=width)
    console.print(aggregate_table(rep, "sweep"))
    text = console.export_text()
    assert max(map(len, text.splitlines())) <= width and "grid c=6" in text and "ASR %" in text
    if width >= 80:
        assert "…" not in text and "18.50 ± 6.35" in text
    if width == 80:
        assert "acc: clean accuracy" in text
    if width == 60:
        assert "left out for width" in text


def test_cli_report(runs, tmp_path):
    result = CliRunner().invoke(app, ["report", str(runs)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "grid c=6" in result.output
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert bad.exit_code != 0
    result = CliRunner().invoke(app, ["report", str(runs), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0 and (tmp_path / "rep" / "aggregate.csv").is_file() and (tmp_path / "rep" / "report.html").is_file()


def test_cli_report_on_one_run_prints_its_summary(runs):
    run = next(p for p in runs.iterdir() if not p.name.startswith("."))
    result = CliRunner().invoke(app, ["report", str(run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for what, value in RunDir(run).metrics().rows():
        assert what in result.output and value in result.output
    assert f"report: {run / 'report.html'}" in result.output.replace("\n", "")
