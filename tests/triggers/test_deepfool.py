"""Targeted DeepFool: the step in closed form, reaching the target, the batched kernel against
its one-sample reference, linearisation at the unclipped image (as the reference), the steps
counted as the reference counts them, and the clipped model input."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from perturbd.triggers.deepfool import converged, deepfool_one, perturbed, targeted_deepfool


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
    r, steps = targeted_deepfool(model, x, torch.zeros(1, 4, 4), target, overshoot=overshoot, max_steps=1)
    assert steps.tolist() == [1, 1], "one step taken; the reference does not look again after its last"
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
    r, steps = targeted_deepfool(model, x, torch.zeros(1, 4, 4), target, overshoot=0.02, max_steps=20)
    assert float(r[0].abs().max()) == 0.0 and int(steps[0]) == 0
    assert bool(converged(steps, 20).all())
    assert bool((model((x + r / 255.0).clamp(0, 1)).argmax(1) == target).all())


def test_batched_deepfool_equals_one_sample_at_a_time(small_cnn) -> None:
    model = small_cnn().eval()
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    delta = torch.randn(1, 28, 28, generator=torch.Generator().manual_seed(4)) * 3
    batched, batched_steps = targeted_deepfool(model, x, delta, 7, 0.02, 5)
    ones = [deepfool_one(model, x[i : i + 1], delta, 7, 0.02, 5) for i in range(5)]
    single = torch.cat([r for r, _ in ones])
    assert float(single.abs().max()) > 1, "the samples do move"
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-3)
    assert batched_steps.tolist() == [steps for _, steps in ones]


def test_perturbed_adds_delta_in_pixel_units_and_clips() -> None:
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
    moved = perturbed(x, torch.full((1, 1, 1), 51.0))  # one δ broadcast over the channels
    torch.testing.assert_close(moved.flatten(), torch.tensor([0.2, 0.7, 1.0]))
    assert perturbed(x, torch.full((1, 1, 1), -255.0)).flatten().tolist() == [0.0, 0.0, 0.0]
    assert x.flatten().tolist() == [0.0, 0.5, 1.0]


def test_a_sample_already_at_the_target_is_not_moved_by_the_reference() -> None:
    model = linear_model(torch.eye(3, 4), torch.zeros(3))
    x = torch.tensor([[0.1, 0.9, 0.2, 0.3]]).view(1, 1, 2, 2)  # class 1 wins
    assert float(deepfool_one(model, x, torch.zeros(1, 2, 2), 1)[0].abs().max()) == 0.0
    r, steps = deepfool_one(model, x, torch.zeros(1, 2, 2), 2, overshoot=0.02, max_steps=10)
    assert int(model(perturbed(x, r)).argmax()) == 2 and float(r.abs().max()) > 0 and 0 < steps < 9


def test_deepfool_linearises_at_the_unclipped_image_as_the_reference_does() -> None:
    # A white image (every pixel at 1) whose way to the target is to brighten every pixel:
    # at the unclipped x + r one linear step reaches the target (the reference's rule); had the
    # model been differentiated at clip(x + r), no step could move it and DeepFool would never
    # converge.
    weight = torch.zeros(2, 4)
    weight[1] = 1.0
    model = linear_model(weight, torch.tensor([5.0, 0.0]))  # f_1 − f_0 = Σx − 5 < 0 at x = 1
    x = torch.ones(3, 1, 2, 2)
    r, steps = targeted_deepfool(model, x, torch.zeros(1, 2, 2), 1, overshoot=0.02, max_steps=10)
    assert steps.tolist() == [1, 1, 1] and bool(converged(steps, 10).all())
    torch.testing.assert_close(r, torch.full_like(x, 1.02 * 255 * 0.25))  # |g| / ‖w‖² · w = 1/4 per pixel
    assert int(model(x + r / 255).argmax(1)[0]) == 1, "unclipped, the step arrives"
    assert int(model(perturbed(x, r)).argmax(1)[0]) == 0, "clipped, it cannot: only the final image is clipped"
    one, taken = deepfool_one(model, x[:1], torch.zeros(1, 2, 2), 1, overshoot=0.02, max_steps=10)
    assert taken == 1 and torch.equal(one, r[:1])


def test_a_sample_that_uses_every_step_counts_max_steps_and_has_not_converged() -> None:
    # As the reference's loop_i: a sample still on its way after max_steps − 1 steps takes the
    # last step and counts max_steps whether or not that step arrives; it has not converged, and
    # neither has one that arrived after exactly max_steps − 1 steps (iter < max_iter − 1).
    model = linear_model(torch.tensor([[0.0, 0, 0, 0], [1, 1, 1, 1]]), torch.tensor([10.0, 0.0]))
    x = torch.full((2, 1, 2, 2), 0.5)
    for max_steps in (1, 2):
        _, steps = targeted_deepfool(model, x, torch.zeros(1, 2, 2), 1, max_steps=max_steps)
        assert steps.tolist() == [1, 1] and not bool(converged(steps, max_steps).any())
    _, steps = targeted_deepfool(model, x, torch.zeros(1, 2, 2), 1, max_steps=3)
    assert steps.tolist() == [1, 1] and bool(converged(steps, 3).all())
