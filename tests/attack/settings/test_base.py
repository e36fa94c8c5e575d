"""The attack-setting registry, and the contract every registered setting keeps."""

from __future__ import annotations

import inspect

import pytest

from perturbd.attack import partition
from perturbd.attack.settings import SETTINGS, get_setting, list_settings, register_setting
from perturbd.config import load_config
from perturbd.data import load_data
from perturbd.errors import ConfigError
from perturbd.runs.twins import TwinStore


def test_settings_are_registered() -> None:
    assert list_settings() == ["before_training", "update"]
    assert list_settings("up*") == ["update"] and list_settings("none*") == []


@pytest.mark.parametrize(
    ("name", "message"),
    [("updte", "unknown attack setting 'updte'; did you mean 'update'?"),
     ("before-training", "unknown attack setting 'before-training'; did you mean 'before_training'?"),
     ("zzz", "unknown attack setting 'zzz'; choose one of: before_training, update")],
)  # fmt: skip
def test_unknown_setting_is_one_line_with_a_suggestion(name: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        get_setting(name)
    assert str(err.value) == message


def test_a_duplicate_setting_raises() -> None:
    with pytest.raises(ValueError, match="attack setting 'update' is already registered"):
        register_setting("update")(type("Other", (), {}))
    assert get_setting("update").__class__.__name__ == "Update"


@pytest.mark.parametrize("name", list_settings())
def test_every_setting_has_check_and_train(name: str) -> None:
    setting = get_setting(name)
    assert isinstance(setting, SETTINGS.get(name)) and get_setting(name) is not setting  # a fresh instance each time
    assert list(inspect.signature(setting.check).parameters) == ["cfg", "split", "part", "twins"]
    assert list(inspect.signature(setting.train).parameters) == ["ctx"]


@pytest.mark.parametrize("name", list_settings())
def test_check_passes_a_valid_config(name: str, synthetic_overrides: list[str]) -> None:
    cfg = load_config(overrides=[*synthetic_overrides, "data.train_limit=400", "attack.update_size=100", f"attack.setting={name}"])
    split = load_data(cfg.data, cfg.seed)
    assert get_setting(name).check(cfg, split, partition(cfg, split.train.labels, 10), TwinStore()) is None
