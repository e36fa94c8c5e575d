"""Only :class:`perturbd.runs.folder.RunDir` names a run folder's files: no module of
``src/perturbd`` outside ``runs/``, and no script of ``experiments/`` or ``benchmarks/``, spells one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from perturbd.runs.folder import RunDir

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "perturbd"


def scanned() -> list[Path]:
    """The modules that must name run-folder files through :class:`RunDir`."""
    library = [p for p in sorted(SRC.rglob("*.py")) if (SRC / "runs") not in p.parents]
    scripts = sorted((ROOT / "experiments").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    return library + scripts


def file_name_literals(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of each string literal that names a run-folder file: the literal, or its
    last ``/`` part (``"/metrics.json"`` of ``f"{run}/metrics.json"``, ``"*/config.yaml"``), is one
    of :attr:`RunDir.NAMES`. Docstrings and prose (text with spaces) may mention the files."""
    tree = ast.parse(source)
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in docstrings:
            continue
        text = node.value
        if not any(c.isspace() for c in text) and text.rsplit("/", 1)[-1] in RunDir.NAMES:
            found.append((node.lineno, text))
    return found


@pytest.mark.parametrize("source, names", [
    ('x = run / "metrics.json"', ["metrics.json"]),
    ('x = f"{run}/defenses.json"', ["/defenses.json"]),
    ('x = glob(str(out / "*/config.yaml"))', ["*/config.yaml"]),
    ('"""Reads metrics.json."""\nx = "the run has no metrics.json"', []),
    ('x = RunDir.METRICS\ny = f"{name}_trigger.png"', []),
])  # fmt: skip
def test_the_check_finds_names_not_prose(source: str, names: list[str]) -> None:
    assert [text for _, text in file_name_literals(source)] == names


def test_scans_the_library_and_the_scripts() -> None:
    paths = {p.relative_to(ROOT).as_posix() for p in scanned()}
    assert {"src/perturbd/config/__init__.py", "experiments/equal_visibility.py", "benchmarks/bench_e2e.py"} <= paths
    assert not any(p.startswith("src/perturbd/runs/") for p in paths)


def test_no_module_outside_runs_names_a_run_folder_file() -> None:
    offenders = [f"{p.relative_to(ROOT)}:{line}: {text!r}" for p in scanned() for line, text in file_name_literals(p.read_text())]
    assert not offenders, "name run-folder files through perturbd.runs.folder.RunDir:\n" + "\n".join(offenders)
