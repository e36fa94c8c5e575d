"""A config mistake is answered before torch loads (under a second): run, sweep, trigger make, report."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """import sys
from perturbd.cli import main
sys.argv = ["perturbd", *sys.argv[1:]]
try:
    main()
except SystemExit as stop:
    print(stop.code, "torch" in sys.modules)
"""


def _answer(*args: str) -> tuple[list[str], str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    return done.stdout.split(), done.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "--set", "poison.rat=0.1"], "did you mean 'rate'"),
        (["sweep", "SWEEP", "--set", "poison.rat=0.1"], "did you mean 'rate'"),
        (["sweep", "SWEEP", "--workers", "0"], "workers"),
        (["sweep", "missing.yaml"], "not found"),
        (["trigger", "make", "--set", "trigger.budget=-1"], "trigger.budget"),
        (["report", "FOLDER"], "no run directories"),
        (["report", "FOLDER/missing"], "no such folder"),
    ],
)
def test_mistake_without_torch(tmp_path, args, message) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text("base: {data: {name: mnist5k}}\naxes: {poison.rate: [0.01, 0.1]}\n")
    args = [a.replace("SWEEP", str(sweep)).replace("FOLDER", str(tmp_path / "empty")) for a in args]
    (tmp_path / "empty").mkdir()
    out, err = _answer(*args)
    assert out == ["2", "False"], (out, err)
    assert message in err and len(err.strip().splitlines()) == 1
