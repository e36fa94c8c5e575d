"""A deployed model behind an input screen: :func:`guard` (``perturbd.guard``) and :class:`Guarded`.

An operator who serves a model wraps it once with a fitted input-level detector (an
:class:`~perturbd.defenses.InputScreen`: STRIP today, any input detector registered later through
the same protocol). Each call returns the model's logits and, per input, the detector's score and
whether it flags the input as carrying a trigger (:class:`GuardOutput`), so the caller can refuse
or log the flagged ones. The guard is a ``torch.nn.Module`` (``.to(device)`` moves the model; the
detector screens on the device of the model it was fitted on), runs the model in eval mode and
records no gradient.

Example:
    >>> import perturbd, torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    >>> x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    >>> model = perturbd.wrap(net, (1, 28, 28))
    >>> strip = perturbd.defend(model, x, "strip", overlays=8, seed=0)
    >>> out = perturbd.guard(model, strip)(x[:4])
    >>> out.logits.shape, out.flagged.shape
    (torch.Size([4, 10]), torch.Size([4]))
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from perturbd.data.dataset import to_float01
from perturbd.defenses.base import InputScreen
from perturbd.errors import ConfigError
from perturbd.models import model_device


class GuardOutput(NamedTuple):
    """What :class:`Guarded` returns for ``N`` inputs: ``logits`` ``(N, K)`` float, the model's;
    ``flagged`` ``(N,)`` bool, the detector's verdict (``detector.flag``); ``scores`` ``(N,)``
    float, its suspicion (``detector.score``: higher = more likely triggered), on the logits'
    device."""

    logits: torch.Tensor
    flagged: torch.Tensor
    scores: torch.Tensor


class Guarded(nn.Module):
    """``model`` with the fitted input screen ``detector`` beside it: ``forward(x)`` →
    :class:`GuardOutput`. ``x``: images ``(N, C, H, W)``, uint8 0–255 or float in [0, 1], as the
    model and the detector take them."""

    def __init__(self, model: nn.Module, detector: InputScreen) -> None:
        super().__init__()
        self.model = model
        self.detector = detector

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> GuardOutput:
        was_training = self.model.training
        self.model.eval()
        try:
            logits = self.model(to_float01(x.to(model_device(self.model))))
            scores = self.detector.score(x)
            flagged = self.detector.flag_scores(scores)  # the protocol: flag(x) == flag_scores(score(x)), screened once
        finally:
            self.model.train(was_training)  # a detector may set its model to eval (STRIP does) and leave it
        return GuardOutput(logits, flagged.to(logits.device), scores.to(logits.device))


def guard(model: nn.Module, detector: InputScreen) -> Guarded:
    """``model`` guarded by ``detector``, a fitted input-level detector (``perturbd.defend(model,
    clean_images, "strip")`` fits one); see :class:`Guarded`.

    Raises:
        ConfigError: one line: ``model`` not an ``nn.Module``; ``detector`` not an input-level
            detector, not fitted yet, or fitted on another model.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"guard() takes a torch.nn.Module as the model, got {type(model).__name__}")
    kind = getattr(detector, "kind", None)
    if kind != "input":
        what = f"a {kind} defence" if isinstance(kind, str) else type(detector).__name__
        raise ConfigError(f"guard() takes a fitted input-level detector (e.g. perturbd.defend(model, x, 'strip')), got {what}")
    if not isinstance(detector, InputScreen):
        raise ConfigError(f"guard() takes a fitted input-level detector: '{getattr(detector, 'name', '?')}' is not fitted; call fit first")
    screened = getattr(detector, "screened_model_", None)
    if screened is not None and screened is not model and getattr(screened, "net", None) is not model:
        raise ConfigError(f"the detector '{detector.name}' was fitted on another model; fit it on the model it guards")
    return Guarded(model, detector)
