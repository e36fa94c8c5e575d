"""`perturbd report PATH`: a folder of runs → tables, figures and HTML; a run → its own page."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from perturbd.errors import ConfigError
from perturbd.report.build import build_report


def test_folder_report_writes_tables_figures_and_html(runs, self_contained):
    rep = build_report(runs)
    names = {p.name for p in rep.files}
    assert {
        "aggregate.csv",
        "aggregate.md",
        "runs.csv",
        "asr_vs_rate.png",
        "asr_vs_strength.png",
        "stealth_vs_asr.png",
        "report.html",
    } <= names
    html = rep.html.read_text()
    assert self_contained(html)
    assert html.count("data:image/png;base64,") == 3
    assert "grid c=10" in html and "Environment" in html
    assert all((r.path / "report.html").is_file() for r in rep.records)


def test_the_table_is_headed_by_how_to_remake_it_the_code_and_the_machine(runs):
    build_report(runs)
    head = (runs / "aggregate.md").read_text().split("\n\n")[0].splitlines()
    envs = [json.loads(p.read_text()) for p in sorted(runs.glob("*/environment.json"))]
    assert head[0] == f"Table: `perturbd report {runs.name}` over its {len(envs)} runs."
    code = envs[0]["git_commit"] or f"no commit, code digest {envs[0].get('code_digest') or 'unrecorded'}"
    assert head[-2] == f"Code: {code[:40]}." and len({(e["git_commit"], e.get("code_digest")) for e in envs}) == 1
    assert head[-1].startswith(f"Machine: {envs[0].get('cpu', 'CPU unrecorded')}, {envs[0]['device']}, ")
    assert f"torch {envs[0]['torch']}." in head[-1]


def test_pivot_is_written_beside_the_tables_and_a_wrong_key_writes_nothing(runs, tmp_path):
    rep = build_report(runs, tmp_path / "out", pivot="poison.rate")
    assert (tmp_path / "out" / "pivot_poison.rate.md").read_text().startswith("| trigger | poison.rate = 0.01 |")
    assert tmp_path / "out" / "pivot_poison.rate.md" in rep.files
    with pytest.raises(ConfigError, match="--pivot seed: not a key that varies"):
        build_report(runs, tmp_path / "other", pivot="seed")
    assert not (tmp_path / "other").exists()
    with pytest.raises(ConfigError, match="is one run"):
        build_report(rep.records[0].path, pivot="poison.rate")
    done = subprocess.run(
        [sys.executable, "-m", "perturbd", "report", str(runs), "--pivot", "seed"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "--pivot seed" in done.stderr


def test_run_report_embeds_trigger_and_samples_and_escapes_text(runs, self_contained):
    run = next(p for p in runs.iterdir() if (p / "trigger.png").is_file())
    rep = build_report(run)
    assert rep.single_run and rep.html == run / "report.html"
    html = rep.html.read_text()
    assert self_contained(html) and html.count("data:image/png;base64,") == 2
    assert "a &lt;b&gt;log&lt;/b&gt; line" in html  # the log is escaped, not interpreted
    assert "attack success rate" in html and "poison:" in html


def test_failed_runs_are_listed_and_an_empty_folder_is_a_one_line_error(runs, tmp_path):
    (runs / "failures").mkdir()
    (runs / "failures" / "fake-0.json").write_text(
        '{"name": "fake", "config_hash": "abc", "seed": 3, "error": "out of <memory>", "time": "now"}'
    )
    html = build_report(runs).html.read_text()
    assert "Failed runs" in html and "out of &lt;memory&gt;" in html
    with pytest.raises(ConfigError, match="no run directories"):
        build_report(tmp_path / "sweep" / ".twins")


def test_out_puts_every_report_file_there_and_none_beside_the_runs(runs, tmp_path):
    before = {p.relative_to(runs) for p in runs.rglob("*")}
    rep = build_report(runs, tmp_path / "report")
    assert {p.relative_to(runs) for p in runs.rglob("*")} == before, "nothing written beside the runs"
    assert rep.html == tmp_path / "report" / "report.html"
    assert all(f.parent in (tmp_path / "report", tmp_path / "report" / "figures") for f in rep.files)
    assert all((tmp_path / "report" / r.path.name / "report.html").is_file() for r in rep.records)
    assert rep.html.read_text().count('href="fake-') == len(rep.records), "the runs' own reports are linked"
    run = rep.records[0].path
    assert build_report(run, tmp_path / "one").html == tmp_path / "one" / "report.html" and not (run / "report.html").exists()


def test_a_run_whose_metrics_another_version_wrote_does_not_stop_the_report(make_run, tmp_path, cli):
    runs = tmp_path / "runs"
    good = make_run(runs, 0, 0.05, 10, asr=0.95)
    old = make_run(runs, 1, 0.05, 10, asr=0.93)
    data = json.loads((old / "metrics.json").read_text())
    del data["clean_model_asr"]
    (old / "metrics.json").write_text(json.dumps(data | {"a_key_from_another_version": 1}))
    rep = build_report(runs)
    (warning,) = rep.warnings
    assert warning.startswith(f"{old / 'metrics.json'} is not a perturbd run's metrics (clean_model_asr: Field required)")
    assert "without a page of its own" in warning and "\n" not in warning
    assert (good / "report.html").is_file() and not (old / "report.html").exists()
    assert "1.00 (n=1/2)" in rep.markdown and "| 2 (seeds 0, 1) |" in rep.markdown
    html = rep.html.read_text()
    assert "Runs read in part" in html and "clean_model_asr: Field required" in html
    code, out, err = cli("report", str(runs), "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert "(n=1/2)" in out and "warning:" in err and "clean_model_asr: Field required" in " ".join(err.split())
