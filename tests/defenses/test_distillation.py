"""Distillation into a fresh student on clean images removes the planted backdoor."""

from __future__ import annotations

from perturbd.defenses import distillation


def test_removes_the_planted_backdoor(mitigates) -> None:
    mitigates("distillation", {"n_clean": 300}, 0.3)


def test_docstring_says_what_is_implemented_and_what_is_not() -> None:
    doc = " ".join(distillation.__doc__.split())
    assert "Hinton, Vinyals and Dean" in doc and "Yoshida and Fujino" in doc and "Neural Attention Distillation" in doc
    assert "alpha=1" in doc and "are not implemented here" in doc and "distils *logits* into a *fresh* student" in doc
