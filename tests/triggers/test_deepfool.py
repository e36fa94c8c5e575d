"""Targeted DeepFool: the step in closed form, reaching the target, the batched kernel against
its one-sample reference, and the clipped model input."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from perturbd.triggers.deepfool import deepfool_one, perturbed, targeted_deepfool


def linear_model(weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return nn.Sequential(nn.Flatten(), lin).eval()


@pytest.mark.parametrize("overshoot", [0.0, 0.02, 0.3])
def test_targeted_deepfool_step_is_the_closed_form_minimal_perturbation(overshoot: float) -> None:
    gen = torch.Generator().manual_seed(1)
    d, k = 16, 3
    weight = torch.randn(k, d, generator=gen) * 0.1
    bias = torch.tensor([0.5, 0.0, -0.2])
    model = linear_model(weight, bias)
    x = torch.full((2, 1, 4, 4), 0.5) + 0.01 * torch.randn(2, 1, 4, 4, generator=gen)  # well inside [0, 1]
    target = 2
    top = model(x).argmax(1)
    assert bool((top != target).all())
    r = targeted_deepfool(model, x, torch.zeros(1, 4, 4), target, overshoot=overshoot, max_steps=1)
    for i in range(2):
        w = weight[target] - weight[top[i]]  # ∇_x (f_t − f_k); δ is in pixel units: x + δ / 255
        g = float(w @ x[i].flatten() + bias[target] - bias[top[i]])
        expected = (1 + overshoot) * abs(g) * 255.0 * w / w.dot(w)
        torch.testing.assert_close(r[i].flatten(), expected, rtol=1e-4, atol=1e-4)
        moved = model(x[i : i + 1] + r[i] / 255.0)[0].detach()
        assert float(moved[target] - moved[top[i]]) >= -1e-4, "the step reaches the boundary toward t"


def test_targeted_deepfool_reaches_the_target_and_leaves_done_samples_alone() -> None:
    gen = torch.Generator().manual_seed(2)
    model = linear_model(torch.randn(4, 16, generator=gen) * 0.2, torch.zeros(4))
    x = torch.rand(6, 1, 4, 4, generator=gen) * 0.5 + 0.25
    target = int(model(x[:1]).argmax(1))  # sample 0 is already at the target
    r = targeted_deepfool(model, x, torch.zeros(1, 4, 4), target, overshoot=0.02, max_steps=20)
    assert float(r[0].abs().max()) == 0.0
    assert bool((model((x + r / 255.0).clamp(0, 1)).argmax(1) == target).all())


def test_batched_deepfool_equals_one_sample_at_a_time(small_cnn) -> None:
    model = small_cnn().eval()
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    delta = torch.randn(1, 28, 28, generator=torch.Generator().manual_seed(4)) * 3
    batched = targeted_deepfool(model, x, delta, 7, 0.02, 5)
    single = torch.cat([deepfool_one(model, x[i : i + 1], delta, 7, 0.02, 5) for i in range(5)])
    assert float(single.abs().max()) > 1, "the samples do move"
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-3)


def test_perturbed_adds_delta_in_pixel_units_and_clips() -> None:
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
    moved = perturbed(x, torch.full((1, 1, 1), 51.0))  # one δ broadcast over the channels
    torch.testing.assert_close(moved.flatten(), torch.tensor([0.2, 0.7, 1.0]))
    assert perturbed(x, torch.full((1, 1, 1), -255.0)).flatten().tolist() == [0.0, 0.0, 0.0]
    assert x.flatten().tolist() == [0.0, 0.5, 1.0]


def test_a_sample_already_at_the_target_is_not_moved_by_the_reference() -> None:
    model = linear_model(torch.eye(3, 4), torch.zeros(3))
    x = torch.tensor([[0.1, 0.9, 0.2, 0.3]]).view(1, 1, 2, 2)  # class 1 wins
    assert float(deepfool_one(model, x, torch.zeros(1, 2, 2), 1).abs().max()) == 0.0
    r = deepfool_one(model, x, torch.zeros(1, 2, 2), 2, overshoot=0.02, max_steps=10)
    assert int(model(perturbed(x, r)).argmax()) == 2 and float(r.abs().max()) > 0
