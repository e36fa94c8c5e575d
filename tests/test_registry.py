"""The one registry shape: register, get, names, duplicates, unknown names with suggestions."""

from __future__ import annotations

import pytest

from perturbd.errors import ConfigError
from perturbd.registry import Registry, suggest


@pytest.fixture
def widgets() -> Registry:
    reg: Registry = Registry("widget")

    @reg.register()
    def grid() -> str:
        return "grid"

    @reg.register("chessboard")
    def _board() -> str:
        return "chessboard"

    reg.register("ring")(lambda: "ring")
    return reg


def test_register_by_function_name_or_given_name(widgets: Registry) -> None:
    assert widgets.get("grid")() == "grid"  # default: the function's __name__
    assert widgets.get("chessboard")() == "chessboard"  # the given name wins over __name__
    assert widgets.get("ring")() == "ring"
    assert "_board" not in widgets and "grid" in widgets and 3 not in widgets


def test_register_returns_the_entry_unchanged() -> None:
    reg: Registry = Registry("widget")

    def f() -> None: ...

    assert reg.register()(f) is f and reg.get("f") is f


def test_names_are_sorted_and_filtered_by_shell_pattern(widgets: Registry) -> None:
    assert widgets.names() == ["chessboard", "grid", "ring"]
    assert list(widgets) == widgets.names()
    assert widgets.names("*r*") == ["chessboard", "grid", "ring"]
    assert widgets.names("?i*") == ["ring"]
    assert widgets.names("c*") == ["chessboard"]
    assert widgets.names("nothing*") == []


def test_duplicate_name_raises_value_error_and_keeps_the_first(widgets: Registry) -> None:
    with pytest.raises(ValueError, match="^widget 'grid' is already registered$"):
        widgets.register("grid")(lambda: "other")
    assert widgets.get("grid")() == "grid"


def test_unknown_name_is_one_line_config_error_with_a_suggestion(widgets: Registry) -> None:
    with pytest.raises(ConfigError) as err:
        widgets.get("gird")
    assert str(err.value) == "unknown widget 'gird'; did you mean 'grid'?"
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no KeyError chained


def test_unknown_name_without_a_close_match_lists_the_choices(widgets: Registry) -> None:
    with pytest.raises(ConfigError, match=r"^unknown widget 'zzzz'; choose one of: chessboard, grid, ring$"):
        widgets.get("zzzz")


def test_suggest() -> None:
    assert suggest("lenet", ["lenet5", "cnn28"]) == "; did you mean 'lenet5'?"
    assert suggest("cnn_28", ["cnn32", "cnn28"]) == "; did you mean 'cnn28'?"  # the closest, not the first
    assert suggest("xyz", ["b", "a"]) == "; choose one of: a, b"
