"""FT-SAM: removes the planted patch that plain fine-tuning only dents; its loss applies exactly
SAM's update (the gradient at the perturbed weights, applied at the weights, which come back
unchanged; BatchNorm's running statistics from the first pass only); same seed ⇒ same weights."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from perturbd.data.dataset import ImageDataset
from perturbd.defenses import build_defense, ft_sam
from perturbd.defenses.ft_sam import perturbation, sam_loss, smooth_cross_entropy
from perturbd.errors import ConfigError
from perturbd.models import get_model, list_models


def test_removes_the_planted_backdoor(mitigates) -> None:
    r = mitigates("ft_sam", {"n_clean": 300, "epochs": 10, "batch_size": 64, "lr": 0.05}, 0.1)
    assert r.metrics["robust_accuracy_after"] > 0.8 and r.metrics["der"] > 0.9


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).train()


@pytest.mark.parametrize("adaptive", [True, False])
def test_the_loss_gives_sams_gradient_and_leaves_the_weights(adaptive: bool) -> None:
    net = _net()
    x, y = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    ref = copy.deepcopy(net)
    weights = [p.detach().clone() for p in net.parameters()]

    loss = sam_loss(2.0, adaptive, 0.1)(net, x, y)
    loss.backward()
    assert all(torch.equal(p, w) for p, w in zip(net.parameters(), weights)), "the weights are back at w"

    # the reference, step by step as BackdoorBench's SAM optimiser does it
    params = list(ref.parameters())
    first = smooth_cross_entropy(ref(x), y, 0.1)
    assert torch.isclose(loss.detach(), first.detach()), "the value reported is the loss at w"
    grads = torch.autograd.grad(first, params)
    scaled = [(p.abs() if adaptive else 1.0) * g for p, g in zip(params, grads)]
    norm = torch.norm(torch.stack([s.norm(2) for s in scaled]))
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.add_(g * 2.0 / (norm + 1e-12) * (p * p if adaptive else 1.0))
    ref[1].momentum = 0.0
    expected = torch.autograd.grad(smooth_cross_entropy(ref(x), y, 0.1), params)
    for p, g in zip(net.parameters(), expected):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-5)  # the conv bias before BatchNorm: zero up to rounding
    # running statistics: updated once, by the pass at w
    once = _net()  # the same start, one forward in training mode
    once(x)
    assert torch.allclose(net[1].running_mean, once[1].running_mean) and torch.allclose(net[1].running_var, once[1].running_var)
    assert net[1].momentum == 0.1, "the momentum is restored"


def test_the_perturbation_has_radius_rho() -> None:
    params = [torch.tensor([1.0, -2.0]), torch.tensor([0.5])]
    grads = (torch.tensor([3.0, 4.0]), torch.tensor([0.0]))
    plain = perturbation(params, grads, 2.0, adaptive=False)
    assert torch.isclose(torch.cat(plain).norm(), torch.tensor(2.0))
    adaptive = perturbation(params, grads, 2.0, adaptive=True)  # ‖e / |w|‖ = ρ: the radius in the weights' scale
    assert torch.isclose(torch.cat([e / p.abs() for e, p in zip(adaptive, params)]).norm(), torch.tensor(2.0))


def test_smoothed_cross_entropy_has_backdoorbenchs_gradient() -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(2), requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0])
    ours = torch.autograd.grad(smooth_cross_entropy(logits, y, 0.1), logits)[0]
    one_hot = torch.full((5, 4), 0.1 / 3).scatter_(1, y.unsqueeze(1), 0.9)  # BackdoorBench's smooth_crossentropy: KL form
    theirs = torch.autograd.grad(F.kl_div(F.log_softmax(logits, 1), one_hot, reduction="none").sum(-1).mean(), logits)[0]
    assert torch.allclose(ours, theirs, atol=1e-7)


@pytest.mark.parametrize("arch", [*list_models(), "tv:resnet18"])
def test_fits_every_architecture(arch: str) -> None:
    shape = (3, 16, 16)  # tiny: every registered model takes it
    model = get_model(arch, shape, 10, seed=0)
    images = torch.randint(0, 256, (16, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    clean = ImageDataset(images, torch.arange(16) % 10, tuple(map(str, range(10))), "noise")
    d = build_defense("ft_sam", n_clean=16, epochs=1, batch_size=8).fit(model, clean)
    assert torch.isfinite(d.model_(torch.rand(2, *shape))).all()
    assert any(not torch.equal(a, b) for a, b in zip(d.model_.parameters(), model.parameters())), "tuned"


def test_same_seed_same_weights_and_the_budget(planted) -> None:
    def fitted(seed: int):
        return build_defense("ft_sam", epochs=1, batch_size=16, seed=seed).fit(planted.model, planted.clean)

    a, b, c = fitted(3), fitted(3), fitted(4)
    assert a.clean_used_ == round(0.05 * len(planted.clean))
    flat = [torch.cat([p.detach().flatten() for p in d.model_.parameters()]) for d in (a, b, c)]
    assert torch.equal(flat[0], flat[1]) and not torch.equal(flat[0], flat[2])


def test_parameters_and_defaults() -> None:
    assert build_defense("ft_sam").get_params() | {"seed": None} == {
        "n_clean": None, "clean_share": 0.05, "epochs": 100, "lr": 0.01, "batch_size": 256, "rho": 2.0, "adaptive": True,
        "label_smoothing": 0.1, "seed": None,
    }  # fmt: skip
    for params, what in [({"rho": -1}, r"ft_sam.rho must be in \[0, 100\]"), ({"label_smoothing": 1}, "ft_sam.label_smoothing")]:
        with pytest.raises(ConfigError, match=what):
            build_defense("ft_sam", **params)
    doc = " ".join((ft_sam.__doc__ or "").split())
    assert "BackdoorBench" in doc and "Departures" in doc and "5 %" in doc and "adaptive" in doc
