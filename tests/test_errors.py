"""User-facing errors: one line, a ValueError, exit code 2, one subclass per kind of mistake."""

from __future__ import annotations

import pytest

from perturbd.errors import CheckpointError, ConfigError, DataError, PerturbdError

KINDS = [PerturbdError, ConfigError, DataError, CheckpointError]


@pytest.mark.parametrize("kind", KINDS)
def test_a_multi_line_message_is_folded_to_one_line(kind: type[PerturbdError]) -> None:
    err = kind("poison.rate must be in [0, 1],\n   got 1.5;\tset\r\nit lower  ")
    assert str(err) == "poison.rate must be in [0, 1], got 1.5; set it lower"
    assert err.args == (str(err),)


@pytest.mark.parametrize("kind", KINDS)
def test_every_error_is_a_value_error_with_exit_code_2(kind: type[PerturbdError]) -> None:
    assert issubclass(kind, PerturbdError) and issubclass(kind, ValueError)
    assert kind.exit_code == 2 and kind("x").exit_code == 2
    with pytest.raises(ValueError, match="^bad value$"):
        raise kind("bad\nvalue")


def test_the_subclasses_are_distinct_kinds() -> None:
    assert not issubclass(ConfigError, DataError) and not issubclass(DataError, CheckpointError)
    assert not issubclass(CheckpointError, ConfigError)
    with pytest.raises(PerturbdError):  # callers catch every user mistake with the base class
        raise CheckpointError("file not found: x.safetensors")
