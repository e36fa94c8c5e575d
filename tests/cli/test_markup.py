"""User text the CLI prints through rich (paths, run and sweep names, values) is printed as it is:
``[red]`` in a folder name is neither a style nor swallowed (issue 39, "Messages")."""

from __future__ import annotations

from pathlib import Path

from conftest import TINY_RUN

SETS = [arg for value in TINY_RUN for arg in ("--set", value)]


def _flat(text: str) -> str:
    """``text`` without whitespace and table rules: rich wraps a long title at the console's width."""
    return "".join(text.replace("│", "").split())


def test_bracketed_paths_and_names_are_printed_literally(cli, tmp_path: Path) -> None:
    out = tmp_path / "[red]x"
    code, said, err = cli("run", *SETS, "--set", "name='[tensorboard]'", "--out", str(out))
    assert code == 0, err
    (run_dir,) = out.iterdir()
    assert run_dir.name.startswith("[tensorboard]-")
    assert _flat(f"perturbd run · {run_dir}") in _flat(said), said

    code, said, err = cli("run", *SETS, "--set", "name='[tensorboard]'", "--out", str(out))  # done: said so
    assert code == 0 and _flat(str(run_dir)) in _flat(err), err

    code, said, err = cli("report", str(run_dir))
    assert code == 0 and _flat(f"report: {run_dir}/report.html") in _flat(err), err

    exported = tmp_path / "[bold]e"
    code, said, err = cli("export", str(run_dir), "--to", str(exported))
    assert code == 0 and _flat(f"wrote {exported}:") in _flat(said), said

    code, said, err = cli("datasets", "--data-root", str(tmp_path / "[dim]data"))
    assert code == 0 and "[dim]data" in _flat(said), said


def test_a_bracketed_sweep_name_and_folder(cli, tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: '[green]grid'\nbase: {{data: {{name: synthetic}}}}\nseeds: [0]\nout: '{tmp_path}/[blue]sw'\n")
    code, _, err = cli("sweep", str(spec), "--dry-run")
    assert code == 0, err
    assert _flat("sweep [green]grid: 1 runs") in _flat(err) and _flat(f"→ {tmp_path}/[blue]sw") in _flat(err), err


def test_the_help_keeps_its_brackets(cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    code, said, _ = cli("run", "--help")
    assert code == 0 and "pip install 'perturbd[tensorboard]'" in said, said
