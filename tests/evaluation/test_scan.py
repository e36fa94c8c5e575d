"""``perturbd.scan``: the data-free default flags the planted backdoor's target and passes its
clean twin; with data Neural Cleanse joins; ``fail_on`` counts flagging detectors; every careless
call is one line before any detector runs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import perturbd
from perturbd.defenses import build_defense
from perturbd.errors import ConfigError, DataError
from perturbd.evaluation.scan import DEFAULT_DETECTORS, data_free, default_detectors

MM = {"mm_bd": {"steps": 40, "starts": 8, "seed": 0}}  # as tests/defenses/test_mm_bd.py


def test_defaults_are_mm_bd_and_with_data_neural_cleanse() -> None:
    assert default_detectors(with_data=False) == ["mm_bd"]
    assert default_detectors(with_data=True) == list(DEFAULT_DETECTORS) == ["mm_bd", "neural_cleanse"]
    assert data_free(build_defense("mm_bd")) and not data_free(build_defense("neural_cleanse"))


def test_flags_the_backdoored_model_not_its_clean_twin(planted) -> None:
    bad = perturbd.scan(planted.model, params=MM)
    good = perturbd.scan(planted.clean_model, params=MM)
    assert (bad.flagged, bad.exit_code, bad.suspected_labels) == (True, 1, [0])
    assert (good.flagged, good.exit_code, good.suspected_labels) == (False, 0, [])
    (det,) = bad.detectors
    assert det.name == "mm_bd" and det.clean_used == 0 and det.rows[0]["flagged"] and det.rows[0]["score"] > det.threshold
    j = bad.to_json()
    assert j["verdict"] == "flagged" and j["detectors"][0]["labels"][0]["p_value"] < 0.05
    assert j["image_shape"] == [1, 28, 28] and j["num_classes"] == 10


def test_with_data_both_detectors_and_fail_on(planted) -> None:
    params = {**MM, "neural_cleanse": {"epochs": 2, "batch_size": 8, "n_clean": 40}}
    r = perturbd.scan(planted.model, planted.clean, params=params)
    assert [d.name for d in r.detectors] == ["mm_bd", "neural_cleanse"]
    assert r.detectors[1].clean_used == 40 and "mask_l1" in r.detectors[1].rows[0]
    assert "mm_bd" in r.flagging and r.flagged
    two = replace(r, fail_on=2)
    assert two.flagged == (len(r.flagging) == 2) and two.exit_code == int(two.flagged)


def test_a_plain_module_with_arrays_is_wrapped(planted) -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    x, y = planted.clean.images[:32], planted.clean.labels[:32]
    r = perturbd.scan(net, (x, y), detectors=["mm_bd"], params={"mm_bd": {"steps": 2, "starts": 2}})
    assert r.image_shape == (1, 28, 28) and len(r.detectors[0].rows) == 10


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"detectors": ["strip"]}, ConfigError, "'strip' is a input defence"),
        ({"detectors": ["neural_cleanse"]}, ConfigError, "give the data the model classifies"),
        ({"detectors": ["mm_bd"], "fail_on": 2}, ConfigError, "fail_on must be in [1, 1]"),
        ({"detectors": ["mm_bd"], "fail_on": 0}, ConfigError, "fail_on must be in [1, 1]"),
        ({"detectors": []}, ConfigError, "at least one detector"),
        ({"detectors": ["mm_bd", "mm_bd"]}, ConfigError, "a detector twice"),
        ({"params": {"neural_cleanse": {"epochs": 1}}}, ConfigError, "not among its detectors"),
        ({"params": {"mm_bd": {"steps": 0}}}, ConfigError, "mm_bd.steps"),
        ({"data": "images"}, ConfigError, "data must be an ImageDataset"),
        ({"data": (torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))}, ConfigError, "the model takes (1, 28, 28)"),
        ({"data": (torch.zeros(4, 1, 28, 28), torch.full((4,), 12))}, DataError, "labels go up to 12"),
    ],
)
def test_careless_calls_are_one_line(planted, kwargs, error, message) -> None:
    with pytest.raises(error) as err:
        perturbd.scan(planted.model, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_plain_module_without_data_and_a_non_module_are_one_line() -> None:
    with pytest.raises(ConfigError, match="wrap it"):
        perturbd.scan(torch.nn.Linear(3, 3))
    with pytest.raises(ConfigError, match="must be a torch.nn.Module"):
        perturbd.scan("model.pt")
