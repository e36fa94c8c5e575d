"""The table of defence kinds: one row per kind, found by a defence's kind, and the matrix cell
over seeds in each kind's form (a saved run's unknown or missing kind in the plain form)."""

from __future__ import annotations

import pytest

from perturbd.defenses import build_defense, get_defense, list_defenses
from perturbd.evaluation.kinds import KINDS, Kind, dots, kind_of, over_seeds, plain_over_seeds


def test_each_row_is_named_by_its_key_and_says_what_the_kind_does() -> None:
    assert list(KINDS) == ["dataset", "input", "model", "mitigation", "update", "training"]
    for name, kind in KINDS.items():
        assert isinstance(kind, Kind) and kind.name == name
        assert kind.about and "\n" not in kind.about
        assert callable(kind.evaluate) and callable(kind.over_seeds) and callable(kind.check)
    with pytest.raises(AttributeError):
        KINDS["input"].about = "changed"  # type: ignore[misc]


def test_a_defence_finds_its_row_by_its_kind() -> None:
    for name in list_defenses():
        assert kind_of(build_defense(name)) is KINDS[get_defense(name).kind]


def test_dots_formats_each_value_and_dashes_none() -> None:
    assert dots([0.99, None, 0.4204], ".3f") == "0.990 · – · 0.420"


CELLS = [{"value": 0.99, "accuracy_cost": 0.01}, {"value": 0.42, "accuracy_cost": 0.02}]
METRICS = [{"tpr_at_5_fpr": 0.89, "target_flagged": True}, {"tpr_at_5_fpr": 0.32, "target_flagged": False}]


@pytest.mark.parametrize(
    "kind,text",
    [
        ("dataset", "AUROC 0.990 · 0.420; TPR at 5 % FPR 0.89 · 0.32"),
        ("input", "AUROC 0.990 · 0.420; TPR at 5 % FPR 0.89 · 0.32"),
        ("model", "target flagged 1/2; anomaly index 0.99 · 0.42"),
        ("mitigation", "ASR after 99.0 · 42.0 %; acc. -1.50 pt (mean); ASR < 10 % in 0/2"),
        ("update", "0.99 · 0.42"),
        (None, "0.99 · 0.42"),
        ("from_a_newer_version", "0.99 · 0.42"),
    ],
)
def test_the_matrix_cell_over_seeds_in_each_kinds_form(kind: str | None, text: str) -> None:
    assert over_seeds(kind, CELLS, METRICS) == text


def test_the_removal_cell_over_seeds_gives_racc_der_and_the_seeds_under_10_percent() -> None:
    cells = [
        {"value": 0.05, "accuracy_cost": 0.01, "robust_accuracy": 0.91, "der": 0.97},
        {"value": 0.5, "accuracy_cost": 0.03, "robust_accuracy": 0.45, "der": 0.73},
        {"value": 0.02, "accuracy_cost": 0.02},  # a seed defended by an older version: no R-Acc or DER
    ]
    assert over_seeds("mitigation", cells, [{"seconds": 12.4}, {"seconds": 30.0}, {}]) == (
        "ASR after 5.0 · 50.0 · 2.0 %; R-Acc 91.0 · 45.0 · – %; DER 0.97 · 0.73 · –; acc. -2.00 pt (mean); fit 12 · 30 · – s; "
        "ASR < 10 % in 2/3"
    )


def test_plain_form_is_the_fallback() -> None:
    assert plain_over_seeds([{"value": None}, {"value": 1234.5}], [{}, {}]) == "– · 1.23e+03"
