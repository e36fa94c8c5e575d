"""The attack × defence matrix: one row per run, labelled by TriggerConfig.label; Markdown and CSV."""

from __future__ import annotations

import csv

import pytest

from perturbd.errors import DataError
from perturbd.report.matrix import matrix_markdown, matrix_rows, seeds_markdown, write_matrix
from perturbd.runs.rundir import write_json


def test_row_labels_are_the_trigger_label_then_the_attack(kinds):
    rows = matrix_rows(sorted(kinds.iterdir()))
    assert sorted(r["label"] for r in rows) == sorted(f"{label}, before_training/full, rate 5 %" for label in (
        "grid c=6", "grid c=10", "patch 3px c=255", "image mask.png", "adaptive deepfool linf ξ=10", "adaptive deepfool linf ξ=20",
    ))  # fmt: skip
    md = matrix_markdown(rows)
    assert md.splitlines()[0] == "| run | clean acc | ASR | spectral_signature | fine_tuning |"
    assert "| patch 3px c=255, before_training/full, rate 5 % (seed 0) | 98.00 % |" in md and "AUROC 0.91" in md


def test_matrix_over_several_runs(kinds, tmp_path):
    run = next(r["run"] for r in matrix_rows(kinds.iterdir()) if r["label"].startswith("patch "))
    md, csv_path = write_matrix(matrix_rows([kinds / run, kinds / run]), tmp_path)
    text = md.read_text()
    assert text.startswith("## Over seeds") and text.count("patch 3px c=255, before_training/full, rate 5 %") == 3  # 1 over seeds + 2 runs
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 2 and float(rows[0]["spectral_signature"]) == 0.91 and rows[0]["fine_tuning_accuracy_cost"] == "0.01"


def test_a_run_without_defenses_is_a_one_line_error(runs):
    run = sorted(p for p in runs.iterdir() if not p.name.startswith("."))[0]
    with pytest.raises(DataError, match="has no defenses.json"):
        matrix_rows([run])


def test_over_seeds_each_defence_lists_every_seed_and_counts_the_verdicts(tmp_path, make_run):
    def report(name, kind, value, **metrics):
        cell = {"text": name, "value": value, **({"accuracy_cost": metrics.pop("cost")} if "cost" in metrics else {})}
        return {"name": name, "kind": kind, "cell": cell, "metrics": metrics}

    for seed, (auroc, index, flagged, after) in enumerate([(0.99, 2.7, True, 0.003), (0.42, 1.1, False, 0.5)]):
        run = make_run(tmp_path, seed, 0.01, 10, asr=0.99 - seed / 100)
        write_json(run / "defenses.json", {"defenses": [
            report("activation_clustering", "dataset", auroc, tpr_at_5_fpr=auroc - 0.1, target_share=0.33 + 0.17 * seed),
            report("activation_clustering_pca", "dataset", auroc / 2, tpr_at_5_fpr=0.0, target_share=0.33 + 0.17 * seed),
            report("neural_cleanse", "model", index, target_flagged=flagged),
            report("distillation", "mitigation", after, cost=0.01 * (seed + 1)),
        ]})  # fmt: skip
    rows = matrix_rows(sorted(p for p in tmp_path.iterdir() if p.is_dir()))
    row = seeds_markdown(rows).splitlines()[2]
    assert row.startswith("| grid c=10, before_training/full, rate 1 % (0, 1) | 98.00 · 98.00 | 99.0 · 98.0 |")
    assert "AUROC 0.990 · 0.420; TPR at 5 % FPR 0.89 · 0.32; target class poisoned 33 · 50 %" in row
    assert "| AUROC 0.495 · 0.210; TPR at 5 % FPR 0.00 · 0.00; target class poisoned 33 · 50 % |" in row, "a variant: its own column"
    assert (
        seeds_markdown(rows)
        .splitlines()[0]
        .endswith("| activation_clustering | activation_clustering_pca | neural_cleanse | distillation |")
    )
    assert "target flagged 1/2; anomaly index 2.70 · 1.10" in row
    assert "ASR after 0.3 · 50.0 %; acc. -1.50 pt (mean)" in row
    assert matrix_markdown(rows).startswith("## Over seeds")
