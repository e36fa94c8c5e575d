"""The defences' record (``defenses.json``): entries accumulate per defence and parameters, a rerun
replaces its own entry in place, old records (format 1, the committed ones) still read, and a file
that is not a record is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perturbd.errors import DataError
from perturbd.evaluation import record
from perturbd.report.matrix import matrix_row

CODE = {"perturbd": "0.x", "git_commit": "abc"}
COMMITTED = Path(__file__).resolve().parents[2] / "experiments" / "results" / "matrix"  # runs defended by format 1


def _entry(name: str, value: float, **params: object) -> dict:
    return {"name": name, "kind": "mitigation", "params": params, "cell": {"value": value, "text": f"{name} {value}"}, "metrics": {}}


def test_entries_accumulate_and_a_rerun_replaces_its_own_in_place() -> None:
    first = record.merge(None, [_entry("fine_tuning", 0.5, epochs=5), _entry("strip", 0.9)], "clean A", CODE, "t1")
    assert first["format"] == record.FORMAT and [e["when"] for e in first["defenses"]] == ["t1", "t1"]
    second = record.merge(first, [_entry("fine_tuning", 0.4, epochs=10)], "clean B", CODE, "t2")
    pairs = [(e["name"], e["params"]) for e in second["defenses"]]
    assert pairs == [("fine_tuning", {"epochs": 5}), ("strip", {}), ("fine_tuning", {"epochs": 10})]
    third = record.merge(second, [_entry("fine_tuning", 0.1, epochs=5)], "clean C", CODE, "t3")
    assert [e["cell"]["value"] for e in third["defenses"]] == [0.1, 0.9, 0.4], "the same defence and parameters: replaced in place"
    assert [e["clean_source"] for e in third["defenses"]] == ["clean C", "clean A", "clean B"], "each entry keeps its own provenance"
    assert third["clean_source"] == "clean C"


def test_a_format_1_record_reads_and_its_entries_keep_its_provenance() -> None:
    old = json.loads(next(COMMITTED.glob("*/defenses.json")).read_text())
    assert "format" not in old, "a committed record of format 1"
    found = record.entries(old)
    assert found and all("when" not in e for e in found)
    merged = record.merge(old, [_entry("nad", 0.02)], "new clean", CODE, "t")
    kept = merged["defenses"][: len(found)]
    assert all(e["clean_source"] == old["clean_source"] and e["code"] == old.get("code") for e in kept)
    assert merged["defenses"][-1]["name"] == "nad"


def test_a_committed_run_with_an_old_record_makes_its_matrix_row() -> None:
    run = next(COMMITTED.glob("*/defenses.json")).parent
    row = matrix_row(run)
    assert "fine_tuning" in row["cells"] and "robust_accuracy" not in row["cells"]["fine_tuning"]


def test_params_compare_as_json_reads_them_back() -> None:
    found = [_entry("ft", 0.5, layers=["a", "b"], lr=0.01)]
    assert record.find(found, "ft", {"lr": 0.01, "layers": ("a", "b")}) is found[0]
    assert record.find(found, "ft", {"lr": 0.02, "layers": ("a", "b")}) is None
    assert record.find(found, "other", {"lr": 0.01, "layers": ["a", "b"]}) is None


def test_labels_name_the_parameters_that_differ() -> None:
    found = [_entry("ft", 0.5, epochs=5, lr=0.01), _entry("strip", 0.9), _entry("ft", 0.4, epochs=10, lr=0.01)]
    assert record.labels(found) == ["ft [epochs=5]", "strip", "ft [epochs=10]"]
    twice = [_entry("ft", 0.5, epochs=5), _entry("ft", 0.5, epochs=5)]  # hand-written: the same twice
    assert record.labels(twice) == ["ft", "ft #2"]


@pytest.mark.parametrize(
    "data,what",
    [
        ([], "no list 'defenses'"),
        ({"defenses": {"a": 1}}, "no list 'defenses'"),
        ({"defenses": [{"name": 3, "cell": {}}]}, "entry 0 of 'defenses' is not a defence's report"),
        ({"defenses": [{"name": "x"}]}, "entry 0 of 'defenses' is not a defence's report"),
    ],
)
def test_a_file_that_is_not_a_record_is_one_line(data: object, what: str) -> None:
    with pytest.raises(DataError, match=what) as err:
        record.entries(data, "somewhere/defenses.json")
    assert "\n" not in str(err.value) and "somewhere/defenses.json" in str(err.value)
    with pytest.raises(DataError, match=what):
        record.merge(data, [_entry("x", 0.0)], "c", CODE, "t")
