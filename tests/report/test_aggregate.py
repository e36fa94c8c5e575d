"""Grouping runs by config minus seed; mean and 95 % t-interval; CSV and Markdown."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import yaml

from perturbd.config import LEGACY_TRIGGER_DEFAULTS, load_config
from perturbd.errors import ConfigError
from perturbd.report.aggregate import (
    aggregate,
    cell,
    collect_runs,
    mean_ci,
    pivot_markdown,
    runs_csv,
    t975,
    to_csv,
    to_markdown,
    varying_keys,
)
from perturbd.report.masks import masks_csv
from perturbd.runs.folder import trigger_section
from perturbd.runs.results import METRICS


def test_t_quantiles():
    assert t975(1) == pytest.approx(12.706)
    assert t975(30) == pytest.approx(2.042)
    assert t975(60) == pytest.approx(2.000, abs=1e-3)
    assert t975(10_000) == pytest.approx(1.960, abs=1e-3)


def test_mean_ci():
    mean, ci, n, of = mean_ci([0.9, 1.0])
    assert mean == pytest.approx(0.95) and (n, of) == (2, 2)
    assert ci == pytest.approx(12.706 * math.sqrt(0.005) / math.sqrt(2))
    assert math.isnan(mean_ci([0.5])[1]) and mean_ci([0.5])[0] == 0.5


def test_a_missing_value_is_counted_not_dropped_silently():
    stat = mean_ci([0.9, None, 1.0, float("nan")])
    assert stat.mean == pytest.approx(0.95) and (stat.n, stat.of) == (2, 4)
    assert cell(stat, "pct") == "95.00 ± 63.53 (n=2/4)"
    assert cell(mean_ci([0.9, 1.0]), "pct") == "95.00 ± 63.53", "nothing missing: no count"
    assert mean_ci([float("inf"), 30.0]).mean == float("inf"), "an infinite PSNR (unchanged images) is a value"
    assert cell(mean_ci([None]), "pct") == "– (n=0/1)"


def test_collects_runs_and_skips_hidden_folders(runs):
    records = collect_runs(runs)
    assert len(records) == 12
    assert not any(part.startswith(".") for r in records for part in r.path.relative_to(runs).parts)
    assert len(collect_runs(records[0].path)) == 1  # a run directory itself


def test_groups_by_config_minus_seed(runs):
    columns, groups = aggregate(collect_runs(runs))
    assert columns == ["trigger", "poison.rate"]
    assert len(groups) == 6 and all(g.seeds == [0, 1] for g in groups)
    assert [g.keys["trigger"] for g in groups[:3]] == ["grid c=6"] * 3  # c sorts numerically: 6 before 10
    g = next(g for g in groups if g.keys == {"trigger": "grid c=6", "poison.rate": 0.03})
    mean, ci, n, of = g.stats["attack_success_rate"]  # seeds give 0.18 and 0.19: sd 0.01/√2, n = 2
    assert mean == pytest.approx(0.185) and ci == pytest.approx(12.706 * 0.005)
    assert (n, of) == (2, 2)


def test_csv_and_markdown(runs):
    columns, groups = aggregate(collect_runs(runs))
    rows = list(csv.DictReader(io.StringIO(to_csv(columns, groups))))
    assert len(rows) == 6 and rows[0]["n"] == "2" and rows[0]["seeds"] == "0 1"
    assert float(rows[0]["attack_success_rate_mean"]) == pytest.approx(groups[0].stats["attack_success_rate"][0], rel=1e-5)
    md = to_markdown(columns, groups)
    assert md.startswith("| trigger | poison.rate | seeds | clean acc. %")
    assert "18.50 ± 6.35" in md  # c=6, rate 0.03: ASR 18 % and 19 %


def test_pivot_puts_one_key_in_the_columns_and_marks_what_was_not_run(runs):
    columns, groups = aggregate(collect_runs(runs))
    kept = [g for g in groups if not (g.keys["poison.rate"] == 0.1 and g.trigger.label == "grid c=6")]
    md = pivot_markdown(columns, kept, "poison.rate")
    assert md.startswith("| trigger | poison.rate = 0.01 | poison.rate = 0.03 | poison.rate = 0.1 |\n|---|---:|---:|---:|\n")
    assert "| grid c=6 | 6.0 · 7.0 (0/2) | 18.0 · 19.0 (0/2) | – |" in md
    assert "| grid c=10 | 10.0 · 11.0 (0/2) | 30.0 · 31.0 (0/2) | 100.0 · 100.0 (2/2) |" in md
    with pytest.raises(ConfigError, match="not a key that varies.*trigger, poison.rate"):
        pivot_markdown(columns, groups, "train.lr")


def test_trigger_column_is_the_trigger_config_label(kinds):
    columns, groups = aggregate(collect_runs(kinds))
    assert columns == ["trigger"]
    # by family, then strength (c or ξ)
    assert [g.keys["trigger"] for g in groups] == [
        "adaptive deepfool linf ξ=10", "adaptive deepfool linf ξ=20", "grid c=6", "grid c=10", "image mask.png", "patch 3px c=255",
    ]  # fmt: skip
    assert [g.trigger.strength for g in groups[:2]] == [10, 20] and groups[0].trigger.family == "adaptive deepfool linf"
    assert "| patch 3px c=255 | 1 (seed 0) |" in to_markdown(columns, groups)


def test_a_config_written_by_another_version_still_reads(runs):
    run = next(r.path for r in collect_runs(runs) if r.config["trigger"].get("amplitude") == 6)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["trigger"]["a_key_from_another_version"] = 1
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert trigger_section(cfg).label == collect_runs(run)[0].trigger.label == "grid c=6"
    assert trigger_section({}).label == "grid c=10"  # no trigger section: the defaults


def test_asr_per_seed_and_how_many_seeds_reach_the_goal(three_seeds):
    columns, (group,) = aggregate(collect_runs(three_seeds))
    assert group.per_seed("attack_success_rate") == [0.95, 0.42, 0.9]
    assert group.reaching() == "2/3"
    md = to_markdown(columns, [group])
    assert "| 95.00 · 42.00 · 90.00 | 2/3 |" in md
    row = next(csv.DictReader(io.StringIO(to_csv(columns, [group]))))
    assert row["asr_per_seed"] == "0.95 0.42 0.9" and row["asr_reaching_goal"] == "2/3"


def _as_another_version_wrote_it(run: Path) -> None:
    """``metrics.json`` without a metric and with a key this version does not know."""
    data = json.loads((run / "metrics.json").read_text())
    del data["clean_model_asr"]
    (run / "metrics.json").write_text(json.dumps(data | {"a_key_from_another_version": 1}))


def test_a_run_whose_metrics_another_version_wrote_is_shown_with_what_it_has(make_run, tmp_path):
    good = make_run(tmp_path, 0, 0.05, 10, asr=0.95)
    old = make_run(tmp_path, 1, 0.05, 10, asr=0.93)
    broken = make_run(tmp_path, 0, 0.1, 10, asr=0.99)
    _as_another_version_wrote_it(old)
    (broken / "metrics.json").write_text("{bad json")
    records = {r.path: r for r in collect_runs(tmp_path)}
    assert records[good].problem is None and "clean_model_asr: Field required" in str(records[old].problem)
    assert records[old].metric("clean_model_asr") is None and records[old].metric("attack_success_rate") == 0.93
    assert all(records[broken].metric(m) is None for m in METRICS) and str(records[broken].problem).startswith("cannot read ")
    columns, groups = aggregate(list(records.values()))
    two, one = sorted(groups, key=lambda g: -len(g.runs))
    assert two.seeds == [0, 1] and two.per_seed("attack_success_rate") == [0.95, 0.93]
    assert cell(two.stats["clean_model_asr"], "pct") == "1.00 (n=1/2)" and two.stats["attack_success_rate"].n == 2
    assert cell(one.stats["attack_success_rate"], "pct") == "– (n=0/1)" and one.reaching() == "0/1"
    assert "(n=1/2)" in to_markdown(columns, groups) and "– (n=0/1)" in to_markdown(columns, groups)
    rows = {row["run_dir"]: row for row in csv.DictReader(io.StringIO(runs_csv(list(records.values()))))}
    assert rows[old.name]["clean_model_asr"] == "" and rows[good.name]["clean_model_asr"] == "0.01"


def test_runs_of_one_config_group_together_whichever_form_their_trigger_section_was_written_in(make_run, tmp_path):
    short = make_run(tmp_path, 0, 0.05, 6, asr=0.95)
    flat = make_run(tmp_path, 1, 0.05, 6, asr=0.91)
    cfg = yaml.safe_load((flat / "config.yaml").read_text())
    assert set(cfg["trigger"]) == {"kind", "amplitude", "psnr", "ssim"}, "the short form, as this version writes it"
    # as runs before per-kind parameters wrote it: every kind's parameter
    cfg["trigger"] = {"kind": "grid", **LEGACY_TRIGGER_DEFAULTS, "amplitude": 6, "psnr": None, "ssim": None}
    (flat / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert load_config(short / "config.yaml").trigger == load_config(flat / "config.yaml").trigger, "one trigger in two forms"
    records = collect_runs(tmp_path)
    assert varying_keys(records) == []
    columns, (group,) = aggregate(records)
    assert columns == [] and group.seeds == [0, 1] and group.stats["attack_success_rate"].n == 2
    assert next(csv.reader(io.StringIO(runs_csv(records)))) == ["run_dir", "seed", *METRICS]


def _computed_mask(run: Path, knowledge: str, arch: str, seconds: float) -> None:
    """``adversary.json`` as a run with an adaptive mask writes it (the fields masks.csv reads)."""
    model = {"arch": arch, "surrogate": knowledge != "full", "holdout_accuracy": 0.998765432, "seed": 0}
    trigger = {
        "method": "deepfool", "norm": "linf", "budget": 10.0, "samples": 1000, "passes_used": 5, "seconds": seconds,
        "fooling_rate_samples": 0.0, "fooling_rate_holdout": 0.000231160418, "holdout_size": 4326, "l2": 237.4191, "linf": 10.0,
    }  # fmt: skip
    (run / "adversary.json").write_text(json.dumps({"knowledge": knowledge, "model": model, "trigger": trigger}))


def test_masks_csv_lists_each_computed_mask_once(make_run, tmp_path):
    low, high = make_run(tmp_path, 0, 0.005, 10, asr=0.5), make_run(tmp_path, 0, 0.01, 10, asr=0.95)
    other = make_run(tmp_path, 1, 0.01, 10, asr=0.97)
    static = make_run(tmp_path, 2, 0.01, 10, asr=0.97)
    for run in (low, high):  # two rates of one seed share one mask
        _computed_mask(run, "full", "cnn28", 20.9084)
    _computed_mask(other, "none", "lenet5", 23.7221)
    (static / "adversary.json").write_text(json.dumps({"knowledge": "full", "model": None, "trigger": {"amplitude": 10.0}}))
    rows = list(csv.DictReader(io.StringIO(masks_csv(collect_runs(tmp_path)))))
    assert [(r["seed"], r["knowledge"], r["model"], r["surrogate"]) for r in rows] == [
        ("0", "full", "cnn28", "False"),
        ("1", "none", "lenet5", "True"),
    ]
    assert rows[0]["model_holdout_accuracy"] == "0.9988" and rows[0]["fooling_rate_holdout"] == "0.00023" and rows[0]["l2"] == "237.42"
    assert rows[0]["seconds"] == "20.908" and rows[1]["seconds"] == "23.722"
    assert masks_csv(collect_runs(static.parent)) is not None and masks_csv([r for r in collect_runs(tmp_path) if r.path == static]) is None
