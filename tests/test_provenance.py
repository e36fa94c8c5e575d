"""Provenance (:mod:`perturbd.provenance`): which machine and which code made a result."""

from __future__ import annotations

import subprocess
import sys

from perturbd import __version__
from perturbd.provenance import PACKAGE, code_digest, code_identity, cpu_name, git_commit


def test_the_code_is_named_by_version_commit_and_source_digest() -> None:
    identity = code_identity()
    assert identity == {"perturbd": __version__, "git_commit": git_commit(), "code_digest": code_digest()}
    assert len(code_digest()) == 16 and (PACKAGE / "provenance.py").is_file()
    assert git_commit() is None or len(git_commit() or "") == 40


def test_provenance_loads_no_torch() -> None:
    """The run-folder helpers and the reports compare code versions without loading torch."""
    code = "import sys, perturbd.provenance as p, perturbd.runs.rundir; p.cpu_name(); p.code_identity(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
    assert cpu_name().endswith(")")
