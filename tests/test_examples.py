"""The notebooks in examples/ run from top to bottom (nbclient, a fresh kernel) and show what they
say they show: examples/python_api.ipynb walks through wrap → run → defend on tiny data."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _execute(name: str, cwd: Path) -> str:
    """Run the notebook ``name`` in ``cwd``; its printed output, all cells together."""
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", []))


@pytest.mark.slow
def test_the_python_api_notebook_runs_and_finds_the_backdoor(tmp_path):
    text = _execute("python_api.ipynb", tmp_path)
    asr, clean_model_asr = map(float, re.search(r"ASR ([\d.]+) \(clean model ([\d.]+)\)", text).groups())
    assert asr > 0.9 and clean_model_asr < 0.2, text
    clean, triggered = map(float, re.search(r"STRIP suspicion: clean (-?[\d.]+), triggered (-?[\d.]+)", text).groups())
    assert triggered > clean, "triggered inputs keep their label under the blends"
    assert re.search(r"Neural Cleanse anomaly index per label: \[", text)
    assert not list(tmp_path.iterdir()), "the notebook writes its run to a temporary folder, not where it runs"
