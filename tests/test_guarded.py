"""``perturbd.guard``: the guard's flags and scores are the detector's, its logits the model's, in
eval mode without gradients; a detector that is not a fitted input screen of this model is one line."""

from __future__ import annotations

import pytest
import torch

import perturbd
from perturbd.defenses import build_defense
from perturbd.errors import ConfigError
from perturbd.guarded import Guarded, GuardOutput

CHEAP = {"overlays": 8, "n_overlay": 100, "n_calibration": 100, "frr": 0.1, "seed": 0}  # as tests/defenses/test_strip.py


@pytest.fixture(scope="module")
def screened(planted):  # type: ignore[no-untyped-def]
    """The planted backdoored model with a fitted STRIP, and a batch half clean, half triggered."""
    strip = build_defense("strip", **CHEAP).fit(planted.model, planted.clean)
    clean = planted.test.images[:16]
    triggered = planted.trigger.apply(planted.test.images[16:32])
    return planted.model, strip, torch.cat([clean, triggered])


def test_flags_equal_the_detectors_and_logits_the_models(screened) -> None:
    model, strip, x = screened
    out = perturbd.guard(model, strip)(x)
    assert isinstance(out, GuardOutput) and out.flagged.dtype == torch.bool and out.flagged.shape == (32,)
    assert torch.equal(out.flagged, strip.flag(x))
    assert torch.equal(out.scores, strip.score(x))
    model.eval()
    assert torch.equal(out.logits, model(x.float() / 255))
    assert not out.logits.requires_grad
    assert float(out.scores[16:].mean()) > float(out.scores[:16].mean()), "the triggered half is more suspicious"
    assert bool(out.flagged.any()), "something is flagged, so the equality above compares verdicts, not only zeros"


def test_the_model_runs_in_eval_mode_and_keeps_its_mode(screened) -> None:
    model, strip, x = screened
    guarded = perturbd.guard(model, strip)
    guarded.train()
    first = guarded(x[:4]).logits
    assert model.training, "the mode is restored"
    assert torch.equal(first, guarded(x[:4]).logits), "BatchNorm in eval mode: the same logits twice"
    model.eval()
    assert isinstance(guarded, torch.nn.Module) and isinstance(guarded, Guarded)
    assert [name for name, _ in guarded.named_children()] == ["model"]


def test_what_cannot_guard_is_one_line(screened, planted) -> None:
    model, strip, _ = screened
    cases = [
        (lambda: perturbd.guard("model.pt", strip), "takes a torch.nn.Module"),
        (lambda: perturbd.guard(model, build_defense("neural_cleanse")), "got a model defence"),
        (lambda: perturbd.guard(model, object()), "got object"),
        (lambda: perturbd.guard(model, build_defense("strip")), "'strip' is not fitted"),
        (lambda: perturbd.guard(planted.clean_model, strip), "fitted on another model"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
