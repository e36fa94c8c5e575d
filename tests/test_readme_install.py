"""The README's install section (issue 40): its first two commands unchanged (the second is the one
CI runs), and the CPU-only route installs every torch package perturbd depends on from PyTorch's
CPU index before perturbd itself."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)

SETUP_AND_RUN = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && perturbd run"
SETUP_AND_TEST = 'python3 -m venv .venv && . .venv/bin/activate && pip install -q -e ".[test]" && pytest -q'


def test_the_first_two_commands_are_unchanged_and_ci_runs_the_second() -> None:
    commands = [line for line in BLOCKS[0].splitlines() if line and not line.startswith("#")]
    assert commands == [SETUP_AND_RUN, SETUP_AND_TEST]
    assert SETUP_AND_TEST in (ROOT / ".ci" / "run").read_text()


def test_the_cpu_route_takes_torch_from_the_cpu_index_then_installs_perturbd() -> None:
    (block,) = [b for b in BLOCKS if "download.pytorch.org/whl/cpu" in b]
    lines = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    cpu = next(i for i, line in enumerate(lines) if line.endswith("--index-url https://download.pytorch.org/whl/cpu"))
    dependencies = (ROOT / "pyproject.toml").read_text().split("dependencies = [")[1].split("]")[0]
    torch_packages = set(re.findall(r'^\s*"(torch[a-z]*)\W', dependencies, flags=re.M))  # tomllib: Python 3.11+
    assert torch_packages == {"torch", "torchvision"} and torch_packages <= set(lines[cpu].split())
    assert any(line.startswith("pip install -e .") for line in lines[cpu + 1 :]), "perturbd after torch: pip keeps the CPU build"
