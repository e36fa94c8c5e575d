"""Rewrite ``src/perturbd/cli/catalog.json``: the defences ``perturbd defenses`` lists without
importing torch (see :mod:`perturbd.cli.catalog`). Run after adding or changing a defence:
``python tools/write_catalog.py``; ``tests/cli/test_listing.py`` fails until it is run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from perturbd.cli.catalog import write_catalog

if __name__ == "__main__":
    print(f"wrote {write_catalog()}")
