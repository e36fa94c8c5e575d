"""`perturbd report`: files, figures and self-contained HTML."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from perturbd.cli import app
from perturbd.report.build import build_report


def _self_contained(text: str) -> bool:
    srcs = re.findall(r'(?:src|href)="([^"]+)"', text)
    return all(s.startswith("data:image/png;base64,") or s.endswith("report.html") for s in srcs) and "<script" not in text


def test_folder_report_writes_tables_figures_and_html(runs):
    rep = build_report(runs)
    names = {p.name for p in rep.files}
    assert {"aggregate.csv", "aggregate.md", "runs.csv", "asr_vs_rate.png", "asr_vs_strength.png", "stealth_vs_asr.png", "report.html"} <= names
    html = rep.html.read_text()
    assert _self_contained(html)
    assert html.count("data:image/png;base64,") == 3
    assert "grid c=10" in html and "Environment" in html
    assert all((r.path / "report.html").is_file() for r in rep.records)


def test_run_report_embeds_trigger_and_samples_and_escapes_text(runs):
    run = next(p for p in runs.iterdir() if (p / "trigger.png").is_file())
    rep = build_report(run)
    assert rep.single_run and rep.html == run / "report.html"
    html = rep.html.read_text()
    assert _self_contained(html) and html.count("data:image/png;base64,") == 2
    assert "a &lt;b&gt;log&lt;/b&gt; line" in html  # the log is escaped, not interpreted
    assert "attack success rate" in html and "poison:" in html


def test_cli_report(runs, tmp_path):
    result = CliRunner().invoke(app, ["report", str(runs)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "grid c=6" in result.output
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert bad.exit_code != 0
