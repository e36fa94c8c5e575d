"""Fixtures of the defence tests: the planted backdoor of ``tests/_planted.py``, built once."""

from __future__ import annotations

import pytest

from _planted import Planted, planted_patch


@pytest.fixture(scope="session")
def planted() -> Planted:
    return planted_patch()
