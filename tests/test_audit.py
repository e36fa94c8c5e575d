"""The update audit: "no change" for an update on clean data, the target flagged for a poisoned one."""

from __future__ import annotations

import pytest

from _planted import TARGET, planted_patch, update_batches, updated
from perturbd.audit import NO_CHANGE, audit_update
from perturbd.errors import ConfigError

FAST = {"n_clean": 300, "nc_steps": 60, "nc_batch": 8, "uap_steps": 30, "uap_batch": 16, "epsilon": 32}


@pytest.fixture(scope="module")
def updates():
    p = planted_patch()
    clean_batch, poisoned_batch = update_batches(p.trigger)
    return p, updated(p.clean_model, clean_batch), updated(p.clean_model, poisoned_batch)


def test_clean_update_is_no_change(updates) -> None:
    p, clean_update, _ = updates
    result = audit_update(p.clean_model, clean_update, p.clean, **FAST)
    assert result.suspicious == []
    assert all(r["verdict"] == NO_CHANGE for r in result.rows)


def test_poisoned_update_flags_the_target(updates) -> None:
    p, _, poisoned_update = updates
    result = audit_update(p.clean_model, poisoned_update, p.clean, **FAST)
    assert result.suspicious == [TARGET]
    row = result.rows[TARGET]
    assert row["verdict"].startswith("suspicious: backdoor toward label 0")
    assert row["evidence"] and row["fooling_rise"] > 0.3
    assert result.to_json()["suspicious_labels"] == [TARGET]


@pytest.mark.parametrize("bad", [{"epsilon": 0}, {"rise": 2}, {"nc_steps": 0}, {"n_clean": 1}, {"epsilonn": 3}])
def test_bad_audit_parameters(bad: dict) -> None:
    p = planted_patch()
    with pytest.raises(ConfigError, match="audit|unknown parameter"):
        audit_update(p.clean_model, p.model, p.clean, **bad)
