"""Targeted DeepFool (Moosavi-Dezfooli et al., CVPR 2016), toward one label: the step of the
paper's adaptive mask, under the rules of the reference universal-perturbation code (LTS4
``universal_pert.py`` and ``deepfool.py``, which Liao et al. build on).

Perturbations are in pixel units of the 0–255 scale on ``x`` float in [0, 1]. As in the reference,
DeepFool differentiates the model at ``x + (δ + r) / 255`` *unclipped* (:func:`shifted`): the
image is clipped to [0, 1] only where it is finally formed (the uint8 rounding of
:meth:`~perturbd.triggers.base.Trigger.apply`). Differentiating at the clipped image instead
freezes every pixel already at 0 or 1 — most of an MNIST digit — and targeted DeepFool then
reaches the target within 10 steps for about 1 % of MNIST samples instead of about 96 %.
:func:`perturbed` (clipped) is the model input of the other steps (the gradient method, the
update audit) and of every measurement.

Each call also returns the number of steps taken, so that the caller can keep a perturbation
only when DeepFool converged, as the reference does (:func:`converged`).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def perturbed(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Model input ``clip(x + δ / 255)``; ``x`` float in [0, 1], ``δ`` pixel units (broadcast)."""
    return (x + delta / 255.0).clamp(0.0, 1.0)


def shifted(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``x + δ / 255`` unclipped: where DeepFool linearises the model (module docstring)."""
    return x + delta / 255.0


def converged(steps: torch.Tensor, max_steps: int) -> torch.Tensor:
    """The reference's test that DeepFool converged: ``steps < max_steps − 1``.

    ``steps`` is the number of linearisation steps taken before the sample reached the target
    (``max_steps`` when it never did). Like the reference (``if iter < max_iter_df - 1``), a
    sample that needed all of the last two steps counts as not converged.
    """
    return steps < max_steps - 1


def targeted_deepfool(
    model: nn.Module, x: torch.Tensor, delta: torch.Tensor, target: int, overshoot: float = 0.02, max_steps: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample targeted DeepFool perturbations ``r`` (pixel units) toward ``target``, batched.

    For each sample of ``x`` (float ``(B, C, H, W)`` in [0, 1]), from ``x + δ`` (unclipped): while
    its top class ``k`` at ``x + δ + (1 + overshoot) r`` is not ``target`` (at most ``max_steps``),
    linearise ``g = f_t − f_k`` and add to ``r`` the minimal L2 step to the linearised boundary,
    ``|g| / ‖∇g‖² · ∇g``. Returns ``((1 + overshoot) r, steps)``: the perturbations ``(B, C, H, W)``
    (zero for samples already at ``target``) and the steps each took (``(B,)``; ``max_steps`` for
    a sample that did not reach ``target`` in fewer steps, as in the reference, whose loop counts
    ``max_iter`` whether or not its last step arrived). All samples still on their way move at once (one
    forward and one backward per step); a sample that reached ``target`` leaves the batch.
    """
    model.eval()
    r = torch.zeros_like(x)
    steps = torch.full((len(x),), max_steps, dtype=torch.long, device=x.device)
    todo = torch.arange(len(x), device=x.device)
    for step in range(max_steps):
        xr = shifted(x[todo], delta + (1 + overshoot) * r[todo]).detach().requires_grad_(True)
        out = model(xr)
        top = out.argmax(1)
        active = top != target
        steps[todo[~active]] = step
        if not bool(active.any()):
            break
        g = out[:, target] - out.gather(1, top[:, None]).squeeze(1)  # ≤ 0 where active
        (grad,) = torch.autograd.grad(g[active].sum(), xr)
        grad = grad[active] / 255.0  # d g / d δ, δ in pixel units
        sq = grad.flatten(1).pow(2).sum(1).clamp_min(1e-12)
        todo = todo[active]
        r[todo] += (g.detach()[active].abs() / sq).view(-1, 1, 1, 1) * grad
    return (1 + overshoot) * r, steps


def deepfool_one(
    model: nn.Module, x: torch.Tensor, delta: torch.Tensor, target: int, overshoot: float = 0.02, max_steps: int = 10
) -> tuple[torch.Tensor, int]:
    """:func:`targeted_deepfool` for one sample ``x`` ``(1, C, H, W)``, written plainly as the
    reference's loop: ``(perturbation, steps taken)``."""
    model.eval()
    r = torch.zeros_like(x)
    steps = 0
    while steps < max_steps:
        xr = shifted(x, delta + (1 + overshoot) * r).detach().requires_grad_(True)
        out = model(xr)[0]
        top = int(out.argmax())
        if top == target:
            return (1 + overshoot) * r, steps
        g = out[target] - out[top]
        (grad,) = torch.autograd.grad(g, xr)
        grad = grad / 255.0
        r = r + float(g.detach().abs()) / max(float(grad.pow(2).sum()), 1e-12) * grad
        steps += 1
    return (1 + overshoot) * r, max_steps
