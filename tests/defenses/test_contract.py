"""One contract over every registered defence, the update audit included (sklearn's
``parametrize_with_checks`` in spirit): builds with defaults, rejects each out-of-range parameter
and unknown ones with one-line ConfigErrors, ``fit`` returns ``self`` with every result its kind's
protocol declares, and its results are finite."""

from __future__ import annotations

import math

import annotated_types as at
import pytest
import torch

from perturbd.defenses import KINDS, PROTOCOLS, build_defense, get_defense, list_defenses, register_defense
from perturbd.defenses.base import Defense, missing_results
from perturbd.errors import ConfigError

ALL = list_defenses()
# cheap settings so that every fit takes well under a second on the planted model
CHEAP = {
    "n_clean": 64, "epochs": 1, "steps": 3, "overlays": 2, "batch_size": 16, "components": 3,
    "nc_epochs": 1, "nc_batch": 8, "uap_steps": 3, "uap_batch": 8,
}  # fmt: skip


def _cheap(name: str) -> dict:
    fields = get_defense(name).Params.model_fields
    return {k: v for k, v in CHEAP.items() if k in fields}


def _out_of_range(name: str) -> list[tuple[str, object]]:
    """For each bounded numeric parameter, a value just outside its lower and its upper bound."""
    bad = []
    for key, field in get_defense(name).Params.model_fields.items():
        for m in field.metadata:
            if isinstance(m, at.Ge):
                bad.append((key, m.ge - 1))
            elif isinstance(m, at.Gt):
                bad.append((key, m.gt - (1 if isinstance(m.gt, int) else 1e-3)))
            elif isinstance(m, at.Le):
                bad.append((key, m.le + 1))
            elif isinstance(m, at.Lt):
                bad.append((key, m.lt))
    return bad


def test_registry_lists_every_kind() -> None:
    kinds = {get_defense(n).kind for n in ALL}
    assert kinds == set(KINDS) == set(PROTOCOLS) == {"dataset", "input", "model", "mitigation", "update"}
    assert list_defenses("fine_*") == ["fine_pruning", "fine_tuning"]
    assert "update_audit" in ALL


def test_unknown_kind_cannot_register() -> None:
    class Odd(Defense):
        name = "odd"
        kind = "odd"

    with pytest.raises(ValueError, match="has kind 'odd'; use one of dataset, input, model, mitigation, update"):
        register_defense(Odd)


def test_duplicate_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_defense(get_defense("strip"))
    with pytest.raises(ConfigError, match="did you mean 'strip'"):
        get_defense("stirp")


@pytest.mark.parametrize("name", ALL)
def test_builds_with_defaults(name: str) -> None:
    d = build_defense(name)
    assert isinstance(d, Defense) and d.name == name
    assert d.get_params() == get_defense(name).Params().model_dump()


@pytest.mark.parametrize("name,key,value", [(n, k, v) for n in ALL for k, v in _out_of_range(n)])
def test_rejects_out_of_range_parameter(name: str, key: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        build_defense(name, **{key: value})
    msg = str(err.value)
    assert f"{name}.{key}" in msg and repr(value) in msg and "\n" not in msg


@pytest.mark.parametrize("name", ALL)
def test_rejects_unknown_and_mistyped_parameters(name: str) -> None:
    with pytest.raises(ConfigError, match="unknown parameter 'nope'"):
        build_defense(name, nope=1)
    key = next(iter(get_defense(name).Params.model_fields))
    with pytest.raises(ConfigError, match=f"{name}.{key}"):
        build_defense(name, **{key: object()})


def _finite(x: object) -> bool:
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x.float()).all())
    return math.isfinite(float(x))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ALL)
def test_fit_returns_self_with_finite_results(name: str, planted) -> None:
    d = build_defense(name, **_cheap(name))
    assert missing_results(d), "results exist only after fit"
    if d.kind == "update":
        assert d.fit(planted.model, planted.clean, before=planted.clean_model) is d
    else:
        assert d.fit(planted.model, planted.train if d.kind == "dataset" else planted.clean) is d
    assert missing_results(d) == [] and isinstance(d, PROTOCOLS[d.kind])
    assert d.clean_used_ == (0 if d.kind == "dataset" else min(64, len(planted.clean)))
    if d.kind == "mitigation":
        assert d.model_ is not planted.model
        logits = d.model_(torch.rand(4, *planted.test.image_shape))
        assert _finite(logits)
    else:
        assert _finite(d.scores_) and d.flagged_.dtype == torch.bool and len(d.flagged_) == len(d.scores_)
        expected = {"dataset": len(planted.train), "model": planted.train.num_classes, "update": planted.train.num_classes}.get(d.kind)
        assert expected is None or len(d.scores_) == expected


@pytest.mark.parametrize("name", [n for n in ALL if get_defense(n).kind == "mitigation"])
def test_mitigation_leaves_the_input_model_untouched(name: str, planted) -> None:
    before = {k: v.clone() for k, v in planted.model.state_dict().items()}
    build_defense(name, **_cheap(name)).fit(planted.model, planted.clean)
    after = planted.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
