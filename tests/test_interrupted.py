"""Nothing lost: an experiment killed at any moment leaves its run directory complete or absent,
and running it again finishes it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from perturbd.config import load_config
from perturbd.runs.experiment import run
from perturbd.runs.rundir import run_dir_for


@pytest.mark.parametrize(("sig", "delay"), [(signal.SIGKILL, 2.5), (signal.SIGINT, 4.0), (signal.SIGKILL, 6.0)])
def test_killed_experiment_is_complete_or_absent_and_resumes(tmp_path, tiny_overrides, sig, delay) -> None:
    out = tmp_path / "runs"
    sets = [*tiny_overrides, "train.epochs=2"]
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "perturbd", "run", *args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    cfg = load_config(overrides=sets)
    final = run_dir_for(cfg, out)
    if final.exists():  # finished before the signal: then it is whole
        assert (final / "metrics.json").is_file() and (final / "model.safetensors").is_file()
    if sig == signal.SIGINT and proc.returncode == 130:  # interrupted inside the CLI (not during start-up imports)
        assert "Traceback" not in err
        assert not out.exists() or not list(out.glob(".tmp-*")), "Ctrl-C removes the partial folder at once"
    result = run(cfg, out)
    assert (result.run_dir / "metrics.json").is_file()
    assert not list(out.glob(".tmp-*")), "partial folders of killed runs are swept away"
