"""Targeted DeepFool (Moosavi-Dezfooli et al., CVPR 2016), toward one label: the step of the
paper's adaptive mask.

Perturbations are in pixel units of the 0–255 scale; the model sees ``clip(x + δ / 255)`` with
``x`` float in [0, 1] (:func:`perturbed`).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def perturbed(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Model input ``clip(x + δ / 255)``; ``x`` float in [0, 1], ``δ`` pixel units (broadcast)."""
    return (x + delta / 255.0).clamp(0.0, 1.0)


def targeted_deepfool(
    model: nn.Module, x: torch.Tensor, delta: torch.Tensor, target: int, overshoot: float = 0.02, max_steps: int = 10
) -> torch.Tensor:
    """Per-sample targeted DeepFool perturbations ``r`` (pixel units) toward ``target``, batched.

    For each sample of ``x`` (float ``(B, C, H, W)`` in [0, 1]) at ``x + δ``: while its top class
    ``k`` is not ``target`` (at most ``max_steps``), linearise ``g = f_t − f_k`` and step to the
    linearised boundary ``g = 0`` with the minimal L2 step ``|g| / ‖∇g‖² · ∇g``. Returns the
    accumulated steps times ``1 + overshoot``, ``(B, C, H, W)``; zero for samples already at
    ``target``. All samples still on their way move at once (one forward and one backward per
    step); a sample that reached ``target`` leaves the batch.
    """
    model.eval()
    r = torch.zeros_like(x)
    todo = torch.arange(len(x), device=x.device)
    for _ in range(max_steps):
        xr = perturbed(x[todo], delta + (1 + overshoot) * r[todo]).detach().requires_grad_(True)
        out = model(xr)
        top = out.argmax(1)
        active = top != target
        if not bool(active.any()):
            break
        g = out[:, target] - out.gather(1, top[:, None]).squeeze(1)  # ≤ 0 where active
        (grad,) = torch.autograd.grad(g[active].sum(), xr)
        grad = grad[active] / 255.0  # d g / d δ, δ in pixel units
        sq = grad.flatten(1).pow(2).sum(1).clamp_min(1e-12)
        todo = todo[active]
        r[todo] += (g.detach()[active].abs() / sq).view(-1, 1, 1, 1) * grad
    return (1 + overshoot) * r


def deepfool_one(
    model: nn.Module, x: torch.Tensor, delta: torch.Tensor, target: int, overshoot: float = 0.02, max_steps: int = 10
) -> torch.Tensor:
    """:func:`targeted_deepfool` for one sample ``x`` ``(1, C, H, W)``, written plainly (the reference)."""
    model.eval()
    r = torch.zeros_like(x)
    for _ in range(max_steps):
        xr = perturbed(x, delta + (1 + overshoot) * r).detach().requires_grad_(True)
        out = model(xr)[0]
        top = int(out.argmax())
        if top == target:
            break
        g = out[target] - out[top]
        (grad,) = torch.autograd.grad(g, xr)
        grad = grad / 255.0
        r = r + float(g.detach().abs()) / max(float(grad.pow(2).sum()), 1e-12) * grad
    return (1 + overshoot) * r
