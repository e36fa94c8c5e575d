"""Distillation into a fresh student on clean images removes the planted backdoor."""

from __future__ import annotations


def test_removes_the_planted_backdoor(mitigates) -> None:
    mitigates("distillation", {"n_clean": 300}, 0.3)
