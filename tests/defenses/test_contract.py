"""One contract over every registered defence, the update audit included (sklearn's
``parametrize_with_checks`` in spirit): builds with defaults, rejects each out-of-range parameter
and unknown ones with one-line ConfigErrors, ``fit`` returns ``self`` with every result its kind's
protocol declares, and its results are finite. A throw-away defence shows that a new defence of
an existing kind is one class and one registry line: the contract and the harness take it."""

from __future__ import annotations

import math
from typing import ClassVar

import annotated_types as at
import pytest
import torch
from planted import TRAIN, tiny_model
from pydantic import Field
from torch import nn

from perturbd.config import DefenseSpec
from perturbd.data.dataset import ImageDataset
from perturbd.defenses import build_defense, get_defense, list_defenses, register_defense
from perturbd.defenses.base import _DEFENSES, Defense, DefenseParams
from perturbd.errors import ConfigError
from perturbd.evaluation import run_defenses
from perturbd.evaluation.kinds import KINDS, kind_of, missing_results

ALL = list_defenses()
# cheap settings so that every fit takes well under a second on the planted model
CHEAP = {
    "n_clean": 64, "epochs": 1, "steps": 3, "overlays": 2, "batch_size": 16, "components": 3,
    "nc_epochs": 1, "nc_batch": 8, "uap_steps": 3, "uap_batch": 8, "n_overlay": 32, "n_calibration": 32, "rounds": 1,
    "isolation_epochs": 1, "finetuning_epochs": 1, "unlearning_epochs": 1,
}  # fmt: skip
DATA_FREE = {"clp", "mm_bd", "scale_up"}  # defences that read no clean image at their defaults (scale_up: data-free mode, T = 0.5)


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
    assert kinds == set(KINDS) == {"dataset", "input", "model", "mitigation", "update", "training"}
    assert list_defenses("fine_*") == ["fine_pruning", "fine_tuning"]
    assert "update_audit" in ALL


@pytest.mark.parametrize("name", ALL)
def test_its_kind_is_a_row_of_the_kinds_table(name: str) -> None:
    kind = kind_of(build_defense(name))
    assert kind.name == get_defense(name).kind and kind.about and "\n" not in kind.about


def test_an_unknown_kind_is_a_one_line_error_naming_the_kinds() -> None:
    class Odd(Defense):
        name = "odd"
        kind = "modle"

    with pytest.raises(ConfigError, match="has kind 'modle', which no evaluator measures; did you mean 'model'") as err:
        kind_of(Odd())
    assert "\n" not in str(err.value)


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
    elif d.kind == "training":
        assert d.fit(lambda: tiny_model(planted.train.image_shape), planted.train, TRAIN) is d
    else:
        assert d.fit(planted.model, planted.train if d.kind == "dataset" else planted.clean) is d
    assert missing_results(d) == [] and isinstance(d, kind_of(d).protocol)
    assert d.clean_used_ == (0 if d.kind in ("dataset", "training") or name in DATA_FREE else min(64, len(planted.clean)))
    if d.kind in ("mitigation", "training"):
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


class LabelScreen(Defense):
    """A throw-away dataset screen (the whole of a new defence's file): an image is suspicious
    when its label is ``label``."""

    name: ClassVar[str] = "label_screen"
    kind: ClassVar[str] = "dataset"

    class Params(DefenseParams):
        label: int = Field(0, ge=0, le=1000, description="the label screened as poisoned")

    def fit(self, model: nn.Module, data: ImageDataset) -> LabelScreen:
        self.scores_ = (data.labels == self.label).float()
        self.flagged_ = self.scores_ > 0.5
        return self


def test_a_new_defence_of_a_kind_is_one_class_and_one_registry_line(planted, monkeypatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(_DEFENSES, "_entries", dict(_DEFENSES._entries))  # registered for this test only
        register_defense(LabelScreen)  # the registry line
        name = LabelScreen.name
        assert name in list_defenses()
        test_its_kind_is_a_row_of_the_kinds_table(name)
        test_builds_with_defaults(name)
        assert _out_of_range(name) == [("label", -1), ("label", 1001)]
        for key, value in _out_of_range(name):
            test_rejects_out_of_range_parameter(name, key, value)
        test_rejects_unknown_and_mistyped_parameters(name)
        test_fit_returns_self_with_finite_results(name, planted)
        (report,) = run_defenses([DefenseSpec(name=name, params={"label": planted.target})], planted.inputs())
        assert report.kind == "dataset" and report.metrics["poisoned"] == len(planted.indices)
        assert report.metrics["tpr"] == 1.0, "every poisoned image carries the target label"
        assert report.cell["text"].startswith(f"AUROC {report.metrics['auroc']:.3f} (TPR 1.00 / FPR ")
    assert name not in list_defenses()
