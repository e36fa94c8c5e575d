"""The run and sweep reports say how many seeds each number is over, give no 95 % interval over
one seed, never cut a defence's name, and show STRIP's clean-model baseline (issue 40)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from rich.console import Console

from perturbd.report.aggregate import aggregate, collect_runs, interval_note, seed_span
from perturbd.report.build import build_report
from perturbd.report.console import aggregate_table, defense_table, summary_table
from perturbd.runs.folder import RunDir


def _rendered(renderable, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_seed_spans() -> None:
    assert seed_span([0]) == "0" and seed_span([2, 0, 1]) == "0–2" and seed_span([0, 1]) == "0, 1"
    assert seed_span([0, 2, 3, 4, 9]) == "0, 2–4, 9"


def test_one_seed_reads_as_one_seed_and_has_no_interval(make_run, tmp_path, cli) -> None:
    root = tmp_path / "one"
    for rate in (0.01, 0.05):
        make_run(root, 0, rate, 10, asr=0.5)
    rep = build_report(root)
    (group, _) = rep.groups
    assert group.seeds_text == "1 (seed 0)" and interval_note(rep.groups) == "one seed per config, no interval"
    html = rep.html.read_text()
    assert "<td>1 (seed 0)</td>" in html and "<td>0</td>" not in html
    assert "95 %" not in html and "no interval from one seed" in html
    assert "| 1 (seed 0) |" in rep.markdown and "95 %" not in rep.markdown.split("ASR ≥")[0]
    assert " ± " not in _rendered(aggregate_table(rep, "t"), 200)
    code, out, err = cli("report", str(root))
    assert code == 0, err
    assert "95 % CI" not in out and "one seed per config, no interval" in " ".join(out.split())


def test_several_seeds_are_counted_and_have_their_interval(three_seeds, make_run, tmp_path_factory) -> None:
    rep = build_report(three_seeds)
    (group,) = rep.groups
    assert group.seeds_text == "3 (seeds 0–2)" and interval_note(rep.groups) == "mean ± 95 % CI over seeds"
    html = rep.html.read_text()
    assert "<td>3 (seeds 0–2)</td>" in html and "Mean ± half-width of the 95 % t-interval over the seeds listed." in html
    assert " ± " in _rendered(aggregate_table(rep, "t"), 200)
    two = tmp_path_factory.mktemp("two")
    for seed in (0, 1):
        make_run(two, seed, 0.01, 10, asr=0.5)
    assert [g.seeds_text for g in aggregate(collect_runs(two))[1]] == ["2 (seeds 0, 1)"]


def test_a_mix_says_where_there_is_an_interval(make_run, tmp_path) -> None:
    root = tmp_path / "mix"
    make_run(root, 0, 0.01, 10, asr=0.5)
    make_run(root, 1, 0.01, 10, asr=0.6)
    make_run(root, 0, 0.05, 10, asr=0.9)
    rep = build_report(root)
    assert sorted(g.seeds_text for g in rep.groups) == ["1 (seed 0)", "2 (seeds 0, 1)"]
    assert interval_note(rep.groups) == "mean ± 95 % CI where a config has 2+ seeds"
    assert "(a config with one seed: its value alone)" in rep.html.read_text()


LONG = ["activation_clustering", "spectral_signature_k5", "neural_cleanse"]


@pytest.mark.parametrize("width", [72, 100])
def test_defence_names_are_never_cut(width: int, make_run, tmp_path) -> None:
    text = "AUROC 0.656 (TPR 0.20 / FPR 0.13 at its threshold; TPR 0.05 at 5 % FPR); class 0 33 % poisoned"
    reports = [SimpleNamespace(name=n, kind="mitigation", cell={"text": text}, metrics={}, clean_used=0, seconds=1.0) for n in LONG]
    shown = _rendered(defense_table(reports, "defend"), width)
    assert all(name in shown for name in LONG), shown
    run = make_run(tmp_path, 0, 0.05, 10, asr=0.9)
    data = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(data | {"defenses": {n: {"text": text, "value": 0.5} for n in LONG}}))
    shown = _rendered(summary_table(RunDir(run).metrics(), run), width)
    assert all(name in shown for name in LONG), shown
    page = build_report(run).html.read_text()
    assert all(f"<th>defense {name}</th>" in page for name in LONG)
