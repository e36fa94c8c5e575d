"""Self-contained HTML: a run's page shows RunMetrics.rows(); the sweep page labels runs by trigger."""

from __future__ import annotations

from perturbd.report.aggregate import collect_runs
from perturbd.report.html import esc, run_html, sweep_html
from perturbd.runs.folder import RunDir
from perturbd.runs.rundir import read_json, write_json


def test_run_page_shows_the_rows_of_run_metrics(runs, self_contained):
    run = next(p for p in runs.iterdir() if (p / "trigger.png").is_file())
    html = run_html(run).read_text()
    assert self_contained(html)
    for what, value in RunDir(run).metrics().rows():
        assert f"<tr><th>{esc(what)}</th><td>{esc(value)}</td></tr>" in html
    assert "<h2>Update</h2>" not in html


def test_update_run_page_shows_the_update_facts(runs):
    run = next(p for p in runs.iterdir() if not p.name.startswith("."))
    metrics = read_json(run / "metrics.json")
    metrics["before_update"] = {"clean_accuracy": 0.97, "attack_success_rate": 0.02}
    metrics["update"] = {
        "batch_size": 600,
        "batch": "fresh",
        "initial_train_size": 4000,
        "epochs": 2,
        "lr": 0.01,
        "pre_update_model": "trained here",
        "checkpoint_sha256": None,
    }
    write_json(run / "metrics.json", metrics)
    html = run_html(run).read_text()
    assert "<tr><th>before update: accuracy / ASR</th><td>97.00 % / 2.00 %</td></tr>" in html
    assert "<h2>Update</h2>" in html and "<tr><th>pre_update_model</th><td>trained here</td></tr>" in html


def test_sweep_page_labels_runs_by_the_trigger_label(kinds, self_contained):
    records = collect_runs(kinds)
    html = sweep_html(kinds, records, [], [], [], []).read_text()
    assert self_contained(html)
    for label in (
        "grid c=6",
        "grid c=10",
        "patch 3px c=255",
        "image mask.png",
        "adaptive deepfool linf ξ=10",
        "adaptive deepfool linf ξ=20",
    ):
        assert f"<td>{esc(label)}</td>" in html


def test_run_page_shows_the_defences_and_only_its_own_figures(runs, self_contained, tmp_path):
    run = next(p for p in runs.iterdir() if (p / "trigger.png").is_file())
    bare = run_html(run).read_text()
    assert "<h2>Defences</h2>" not in bare, "no defence ran: no section"
    (tmp_path / "secret.png").write_bytes((run / "trigger.png").read_bytes())
    (run / "nc_trigger.png").write_bytes((run / "trigger.png").read_bytes())
    removal = {"asr_before": 0.98, "asr_after": 0.04, "robust_accuracy_before": 0.01, "robust_accuracy_after": 0.93, "der": 0.955}
    when = "2026-12-06T17:00:00+00:00"
    outside = f"../../{tmp_path.name}/secret.png"
    write_json(run / "defenses.json", {"clean_source": "c", "defenses": [
        {"name": "nad", "kind": "mitigation", "params": {"epochs": 20}, "cell": {"text": "ASR 98→4 %"}, "metrics": removal, "when": when},
        {"name": "fine_tuning", "kind": "mitigation", "params": {}, "cell": {"text": "ASR 90→5 %"}, "metrics": {"asr_after": 0.05}},
        {"name": "neural_cleanse", "kind": "model", "params": {}, "cell": {"text": "flags [0]"}, "figures": ["nc_trigger.png", outside]},
    ]})  # fmt: skip
    html = run_html(run).read_text()
    assert self_contained(html) and "<h2>Defences</h2>" in html
    assert "<td class='n'>4.0</td>" in html and "<td class='n'>93.0</td>" in html and "<td class='n'>0.9550</td>" in html
    assert "flags [0]" in html and "epochs=20" in html and "2026-12-06T17:00:00+00:00" in html
    assert html.count("data:image/png;base64,") == bare.count("data:image/png;base64,") + 1, "nc_trigger.png; no file outside the run"
    write_json(run / "defenses.json", {"defenses": "not a list"})
    assert "is not a perturbd defences record" in run_html(run).read_text(), "a page still, saying what is wrong"
