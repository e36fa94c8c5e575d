"""Same config and seed ⇒ byte-identical metrics.json, across two processes on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _run(out, tiny_overrides) -> bytes:
    sets = [a for s in [*tiny_overrides, "train.epochs=2"] for a in ("--set", s)]
    env = {**os.environ, "PYTHONHASHSEED": str(hash(str(out)) % 1000)}  # a different hash seed per process
    proc = subprocess.run(
        [sys.executable, "-m", "perturbd", "run", *sets, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = list(out.iterdir())
    return (run_dir / "metrics.json").read_bytes()


def test_two_processes_give_byte_identical_metrics(tmp_path, tiny_overrides) -> None:
    first = _run(tmp_path / "a", tiny_overrides)
    second = _run(tmp_path / "b", tiny_overrides)
    assert first == second
    (run_dir,) = list((tmp_path / "a").iterdir())
    env = json.loads((run_dir / "environment.json").read_text())
    assert {"torch", "python", "device", "git_commit", "code_digest", "perturbd"} <= set(env)
