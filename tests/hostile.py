"""The one harness of the hostile-input tables (issue 39; the table of tables is the docstring of
``tests/test_bad_input.py``): a CLI mistake ends in one line naming the problem, exit code 2 and no
traceback; an API mistake raises perturbd's own error type in one line. What "nothing written"
means stays with each table (its folders differ); :func:`tree` lists a folder to compare."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def assert_one_line_exit_2(code: int, err: str, *messages: str, squeeze: bool = False) -> None:
    """The CLI answered ``code`` and ``err`` (from the ``cli`` fixture): exit 2, every one of
    ``messages`` in ``err`` (read with its runs of whitespace as one space where ``squeeze``), one
    line, no traceback."""
    assert code == 2, err
    said = " ".join(err.split()) if squeeze else err
    for message in messages:
        assert message in said, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def run_case(
    cli: Callable[..., tuple[int, str, str]],
    case: Callable[[Path], tuple[list[str], str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    squeeze: bool = False,
) -> Path:
    """One row of a CLI table: ``case(tmp_path / "inputs")`` writes its files there and gives the
    arguments and the message; run in ``tmp_path`` with ``--out tmp_path / "runs"``, it must
    :func:`assert_one_line_exit_2`. Returns that ``--out`` folder, for the table's own "nothing
    written" check."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    out = tmp_path / "runs"
    monkeypatch.chdir(tmp_path)
    args, message = case(inputs)
    code, _, err = cli(*args, "--out", str(out))
    assert_one_line_exit_2(code, err, message, squeeze=squeeze)
    return out


def assert_api_error(call: Callable[[], object], error_type: type[BaseException], message: str, label: str = "") -> BaseException:
    """``call()`` raises ``error_type`` whose text holds ``message`` on one line; returns the error.
    ``label`` names the call in a failure (where one test tries several)."""
    with pytest.raises(error_type) as caught:
        call()
    text = str(caught.value)
    assert message in text, f"{label}: {text}"
    assert "\n" not in text and len(text.splitlines()) == 1, f"{label}: {text}"
    return caught.value


def tree(root: Path) -> list[str]:
    """Every path below ``root``, relative and sorted: the same before and after = nothing written."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


class Touch:
    """What a hostile pickle holds: unpickling it runs ``touch PATH`` (the marker says it ran)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.path}",)
