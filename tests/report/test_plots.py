"""The sweep figures: which are drawn, and the legends (TriggerConfig.label and .family)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from perturbd.report import plots
from perturbd.report.aggregate import aggregate, collect_runs


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions close, kept open to read their legends."""
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", figures.append)
    yield figures
    monkeypatch.undo()
    for fig in figures:
        close(fig)


def legend(fig) -> list[str]:
    return [label for ax in fig.axes for label in ax.get_legend_handles_labels()[1]]


def test_legends_use_the_trigger_label_and_family(kinds, tmp_path, drawn):
    columns, groups = aggregate(collect_runs(kinds))
    assert plots.asr_vs_rate(columns, groups, tmp_path / "rate.png") is None  # one rate: no x axis
    assert plots.asr_vs_strength(columns, groups, tmp_path / "strength.png") == tmp_path / "strength.png"
    assert plots.stealth_vs_asr(columns, groups, tmp_path / "stealth.png") == tmp_path / "stealth.png"
    strength, stealth = drawn
    assert legend(strength) == ["adaptive deepfool linf", "grid"]  # one line per family with more than one size
    assert legend(stealth) == [
        "adaptive deepfool linf ξ=10", "adaptive deepfool linf ξ=20", "grid c=6", "grid c=10", "image mask.png", "patch 3px c=255",
    ]  # fmt: skip


def test_rate_figure_has_one_line_per_trigger(runs, tmp_path, drawn):
    columns, groups = aggregate(collect_runs(runs))
    drawn_files = plots.write_figures(columns, groups, tmp_path / "figures")
    assert [p.name for _, p in drawn_files] == ["asr_vs_rate.png", "asr_vs_strength.png", "stealth_vs_asr.png"]
    assert all(p.stat().st_size > 0 for _, p in drawn_files)
    rate = drawn[0]
    assert legend(rate) == ["grid c=6", "grid c=10"] * 2  # both panels: ASR and accuracy loss
