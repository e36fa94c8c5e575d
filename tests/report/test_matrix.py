"""The attack × defence matrix: one row per run, labelled by TriggerConfig.label; Markdown and CSV."""

from __future__ import annotations

import csv

import pytest

from perturbd.errors import DataError
from perturbd.report.matrix import matrix_markdown, matrix_rows, write_matrix


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
    assert md.read_text().count("patch 3px c=255, before_training/full, rate 5 %") == 2
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 2 and float(rows[0]["spectral_signature"]) == 0.91 and rows[0]["fine_tuning_accuracy_cost"] == "0.01"


def test_a_run_without_defenses_is_a_one_line_error(runs):
    run = sorted(p for p in runs.iterdir() if not p.name.startswith("."))[0]
    with pytest.raises(DataError, match="has no defenses.json"):
        matrix_rows([run])
