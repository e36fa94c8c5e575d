"""The shell's conventions (issue 40): `perturbd --version`, `-h` as `--help` everywhere, no
`<bool>` placeholder beside a flag, `[tensorboard]` kept in the help, commands in the order a user
needs them (run, sweep, report first)."""

from __future__ import annotations

import pytest
import typer

from perturbd.cli import app
from perturbd.cli.app import ORDER
from perturbd.version import __version__


def _commands() -> list[list[str]]:
    """Every command path of the app: ``[]`` (the app), ``["run"]``, ``["trigger", "list"]``…"""
    root = typer.main.get_command(app)
    paths: list[list[str]] = [[]]
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        paths.append([name])
        paths += [[name, sub] for sub in getattr(command, "commands", {})]
    return paths


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # one line per option: what is asserted is not wrapped away


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(cli, flag: str) -> None:
    code, out, err = cli(flag)
    assert (code, out.strip(), err) == (0, f"perturbd {__version__}", "")


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "perturbd")
def test_short_help_is_the_help_and_no_flag_shows_a_placeholder(cli, wide, path: list[str]) -> None:
    code, long, _ = cli(*path, "--help")
    assert code == 0 and f"Usage: perturbd {' '.join(path)}".rstrip() in long
    assert cli(*path, "-h") == (0, long, "")
    assert "<bool>" not in long and "<list[" not in long
    help_row = next(line for line in long.splitlines() if "--help" in line)
    assert help_row.split()[1:3] == ["--help", "-h"], help_row


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_brackets_survive_the_help_markup(cli, wide, command: str) -> None:
    code, out, _ = cli(command, "--help")
    assert code == 0 and "pip install 'perturbd[tensorboard]'" in out
    tensorboard = next(line for line in out.splitlines() if "--tensorboard" in line)
    assert tensorboard.split()[1:3] == ["--tensorboard", "DIR"], tensorboard


def test_commands_come_in_the_order_a_user_needs_them(cli, wide) -> None:
    code, out, _ = cli("--help")
    assert code == 0
    listed = [line.strip("│ ").split()[0] for line in out.split("Commands")[1].splitlines()[1:] if line.startswith("│ ") and line[2] != " "]
    assert listed[:3] == ["run", "sweep", "report"]
    assert [n for n in listed if n in ORDER] == [n for n in ORDER if n in listed]
    assert set(listed) == set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_a_docstring_s_line_breaks_do_not_reach_the_help(cli, wide) -> None:
    code, out, _ = cli("--help")
    assert code == 0
    defend = next(line for line in out.splitlines() if line.startswith("│ defend "))
    assert "--arch" in defend, "the command's first paragraph on one line at this width"
