"""The knowledge table (:mod:`perturbd.knowledge`): what each level holds, and the config's check."""

from __future__ import annotations

import pytest

from perturbd.config import AttackConfig, load_config
from perturbd.errors import ConfigError
from perturbd.knowledge import KNOWLEDGE


def test_the_table_holds_the_five_levels_of_the_design() -> None:
    assert list(KNOWLEDGE) == ["full", "data", "model", "weights", "none"]
    assert all(k.architecture for k in KNOWLEDGE.values() if k.weights), "who holds the weights knows the architecture"
    assert (
        KNOWLEDGE["full"].data
        and KNOWLEDGE["full"].weights
        and not any(vars(KNOWLEDGE["none"])[f] for f in ("data", "architecture", "weights"))
    )
    with pytest.raises(TypeError):
        KNOWLEDGE["none"] = KNOWLEDGE["full"]  # type: ignore[index]


@pytest.mark.parametrize("level", list(KNOWLEDGE))
def test_every_level_of_the_table_is_a_valid_config(level: str) -> None:
    assert load_config(overrides=[f"attack.knowledge={level}"]).attack.knowledge == level
    assert f"{level} ({KNOWLEDGE[level].description})" in AttackConfig.model_fields["knowledge"].description


def test_an_unknown_level_is_one_line_with_the_levels_and_the_closest() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["attack.knowledge=weight"])
    assert str(err.value) == (
        "config 'attack.knowledge': Value error, must be one of full, data, model, weights, none (did you mean 'weights'?), got 'weight'"
    )
    with pytest.raises(ConfigError, match=r"must be one of full, data, model, weights, none, got 'xyz'$"):
        load_config(overrides=["attack.knowledge=xyz"])
