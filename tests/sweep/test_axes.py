"""Sweep axes: the value generators, key checks, and merging partial configs into the base."""

from __future__ import annotations

import pytest

from perturbd.errors import ConfigError
from perturbd.sweep.axes import axis_values, check_key, deep_merge

# --------------------------------------------------------------------------- generators


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ([0.01, "x", {"kind": "grid"}], [0.01, "x", {"kind": "grid"}]),  # a list as it is
        ({"range": [4, 12, 2]}, [4, 6, 8, 10]),  # stop excluded, as range()
        ({"range": [10, 0, -3]}, [10, 7, 4, 1]),
        ({"range": [0.1, 0.5, 0.1]}, [0.1, 0.2, 0.3, 0.4]),  # floats: stop excluded, no 0.30000000000000004
        ({"range": [0, 1, 0.25]}, [0.0, 0.25, 0.5, 0.75]),
        ({"linspace": [0, 1, 5]}, [0.0, 0.25, 0.5, 0.75, 1.0]),  # both ends included
        ({"linspace": [2, 3, 1]}, [2]),  # n < 2: the start only
        ({"linspace": [0, 1, 0]}, [0]),
        ({"logspace": [0.01, 0.1, 3]}, [0.01, 0.0316228, 0.1]),  # geometric, 6 significant digits
        ({"logspace": [1, 100, 3]}, [1.0, 10.0, 100.0]),
        ({"logspace": [5, 50, 1]}, [5]),
    ],
)
def test_axis_values(spec, expected) -> None:
    assert axis_values("k", spec) == expected


def test_integer_ranges_stay_integers() -> None:
    assert all(type(v) is int for v in axis_values("train.epochs", {"range": [1, 6, 2]}))
    assert all(type(v) is float for v in axis_values("k", {"range": [1, 3, 0.5]}))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([], "sweep axis 'k' has no values; give a non-empty list"),
        ({"rnage": [1, 2, 1]}, "sweep axis 'k': unknown generator 'rnage'; did you mean 'range'?"),
        ({"steps": [1, 2, 1]}, "unknown generator 'steps'; choose one of: linspace, logspace, range"),
        ({"range": [1, 2]}, "sweep axis 'k': range takes [start, stop, step], got [1, 2]"),
        ({"linspace": [0, 1, "3"]}, "linspace takes [start, stop, n], got [0, 1, '3']"),
        ({"range": [1, 5, 0]}, "range step must not be 0"),
        ({"range": [5, 1, 1]}, "sweep axis 'k': range [5, 1, 1] gives no value"),
        ({"logspace": [0, 1, 3]}, "logspace needs positive start and stop, got 0, 1"),
        (0.1, "sweep axis 'k' must be a list of values or {range|linspace|logspace: [a, b, c]}, got 0.1"),
        ({"range": [1, 2, 1], "linspace": [1, 2, 2]}, "must be a list of values"),
    ],
)
def test_bad_axis_is_one_line_config_error(spec, message) -> None:
    with pytest.raises(ConfigError) as err:
        axis_values("k", spec)
    assert message in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize("key", ["poison.rate", "trigger.amplitude", "trigger", "data", "train.lr", "name", "model.name", "defenses"])
def test_keys_of_the_experiment_config_pass(key: str) -> None:
    check_key(key)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("poison.rat", "sweep axis 'poison.rat': 'rat' is not a key of poison; did you mean 'rate'?"),
        ("poisn.rate", "sweep axis 'poisn.rate': 'poisn' is not a key of config; did you mean 'poison'?"),
        ("seed", "sweep axis 'seed': list seeds under `seeds:`, not in `axes:`"),
        ("poison.rate.low", "sweep axis 'poison.rate.low': 'poison.rate' is a value, not a section"),
        ("name.first", "'name' is a value, not a section"),
    ],
)
def test_bad_key_is_one_line_config_error(key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_key(key)
    assert message in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- merging


def test_deep_merge_merges_mappings_recursively_into_base() -> None:
    base = {"trigger": {"kind": "grid", "amplitude": 6}, "train": {"epochs": 1}, "seed": 0}
    out = deep_merge(base, {"trigger": {"amplitude": 10, "size": 3}, "train": 5, "data": {"name": "mnist"}})
    assert out is base  # base is modified and returned
    assert out == {"trigger": {"kind": "grid", "amplitude": 10, "size": 3}, "train": 5, "seed": 0, "data": {"name": "mnist"}}


def test_deep_merge_copies_values_as_json() -> None:
    extra = {"poison": {"classes": [1, 2]}, "data": {"root": pytest}}  # any object: stored as its str()
    out = deep_merge({"poison": "x"}, extra)
    out["poison"]["classes"].append(3)
    assert extra["poison"]["classes"] == [1, 2]  # the variant is not shared with the merged config
    assert out["data"]["root"] == str(pytest)
