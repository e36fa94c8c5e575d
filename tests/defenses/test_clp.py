"""CLP: the channel bound against a hand computation on a known conv + BatchNorm, the outlier rule,
the pruned channels exactly zero, the conv/BatchNorm pairing on every architecture, data-free."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from perturbd.data.dataset import ImageDataset
from perturbd.defenses import build_defense
from perturbd.defenses.clp import channel_bounds, conv_batchnorm_pairs, outliers
from perturbd.errors import ConfigError
from perturbd.models import get_model, list_models

ARCHS = [*list_models(), "tv:resnet18"]
SHAPE = (3, 16, 16)


def _known_layer() -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """Three 2-input, 1×2-kernel filters whose (2, 2) matrices have known largest singular values
    (4, 2 and 5) and a BatchNorm (ε = 0) scaling them by |γ| / √var = 0.5, 2 and 1."""
    conv = nn.Conv2d(2, 3, (1, 2), bias=False)
    bn = nn.BatchNorm2d(3, eps=0.0)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[3.0, 0.0], [0.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]], [[1.0, 2.0], [2.0, 4.0]]]).view(3, 2, 1, 2))
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    return conv, bn


def _scripted(net: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(net.eval())


def _data(shape: tuple[int, int, int], n: int = 4) -> ImageDataset:
    return ImageDataset(torch.zeros(n, *shape, dtype=torch.uint8), torch.zeros(n, dtype=torch.long), tuple(str(c) for c in range(10)))


def test_the_bound_is_the_spectral_norm_times_the_batchnorm_scale() -> None:
    conv, bn = _known_layer()
    # diag(3, 4): 4; all ones: 2; rank one (1, 2)ᵀ(1, 2): 1 + 4 = 5
    assert torch.allclose(channel_bounds(conv, None), torch.tensor([4.0, 2.0, 5.0], dtype=torch.float64))
    assert torch.allclose(channel_bounds(conv, bn), torch.tensor([2.0, 4.0, 5.0], dtype=torch.float64))
    # it ranks channels; it is not a bound on one output position (the flattened filter's norm is:
    # diag(3, 4) reaches 5 > 4 on x ∝ (3, 4)), as the module docstring says
    x = torch.tensor([3.0, 0.0, 0.0, 4.0]).view(1, 2, 1, 2) / 5
    with torch.no_grad():
        assert float(conv(x)[0, 0]) == pytest.approx(5.0)


def test_the_outlier_rule_is_mean_plus_u_std() -> None:
    bounds = torch.tensor([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.0, 6.0], dtype=torch.float64)
    mean, std = bounds.mean(), bounds.std()  # std with Bessel's correction, as the authors' torch.std
    assert float(mean + 2 * std) < 6.0 < float(mean + 3 * std)
    assert outliers(bounds, 2.0).tolist() == [8]
    assert outliers(bounds, 3.0).tolist() == []
    assert outliers(torch.tensor([9.0], dtype=torch.float64), 0.0).tolist() == [], "one channel has no spread"


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(32)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.pool(self.conv(x))))


def test_prunes_exactly_the_outlier_channel_to_zero() -> None:
    torch.manual_seed(0)
    net = _ConvBN().eval()
    with torch.no_grad():
        # one channel far more sensitive than the rest (of n channels, no z-score reaches (n − 1) / √n:
        # 3 needs at least 11)
        net.conv.weight[7] *= 20
        net.bn.running_mean.uniform_(-0.5, 0.5)
    d = build_defense("clp").fit(net, _data(SHAPE))
    assert d.batchnorm_ == {"conv": "bn"} and d.pruned_ == {"conv": [7]} and d.clean_used_ == 0
    expected = outliers(channel_bounds(net.conv, net.bn), 3.0).tolist()
    assert expected == [7]
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        out, before = d.model_.bn(d.model_.pool(d.model_.conv(x))), net.bn(net.pool(net.conv(x)))
    assert float(out[:, 7].abs().max()) == 0.0
    keep = [c for c in range(32) if c != 7]
    assert torch.equal(out[:, keep], before[:, keep])
    assert torch.equal(net.bn.weight[7], torch.tensor(1.0)), "the input model is untouched"
    assert d.facts_["pruned"] == 1 and d.facts_["channels"] == 32


def test_pairing_follows_the_data_not_the_module_order() -> None:
    torch.manual_seed(0)
    cnn = get_model("cnn28", (1, 28, 28), 10, seed=0)
    assert conv_batchnorm_pairs(cnn, (1, 28, 28)) == {"body.0": "body.2", "body.4": "body.6"}, "conv → max-pool → BatchNorm"
    lenet = get_model("lenet5", (1, 28, 28), 10, seed=0)
    assert set(conv_batchnorm_pairs(lenet, (1, 28, 28)).values()) == {None}
    resnet = get_model("tv:resnet18", SHAPE, 10, seed=0)
    pairs = conv_batchnorm_pairs(resnet, SHAPE)
    assert pairs["body.conv1"] == "body.bn1" and pairs["body.layer2.0.downsample.0"] == "body.layer2.0.downsample.1"
    assert None not in pairs.values(), "every torchvision ResNet conv feeds its own BatchNorm"
    preact = conv_batchnorm_pairs(get_model("preact_resnet18", SHAPE, 10, seed=0), SHAPE)
    # in a pre-activation block, bn2 reads conv1; bn1 of the next block reads a residual sum
    assert any(bn is not None and bn.endswith("bn2") for bn in preact.values())
    assert not any(bn is not None and bn.endswith("bn1") and not conv.endswith("conv1") for conv, bn in preact.items())


@pytest.mark.parametrize("arch", ARCHS)
def test_runs_on_every_architecture_without_data(arch: str) -> None:
    shape = (1, 28, 28) if arch in ("cnn28", "lenet5", "lenet5_valid") else SHAPE
    model = get_model(arch, shape, 10, seed=0).eval()
    d = build_defense("clp", u=1.0).fit(model, _data(shape, n=0))
    assert d.clean_used_ == 0 and d.bounds_ and all(torch.isfinite(b).all() for b in d.bounds_.values())
    assert d.facts_["pruned"] == sum(len(p) for p in d.pruned_.values()) > 0
    with torch.no_grad():
        assert bool(torch.isfinite(d.model_(torch.rand(2, *shape))).all())


def test_same_model_same_pruning(planted) -> None:
    a = build_defense("clp", u=1.5).fit(planted.model, planted.clean)
    b = build_defense("clp", u=1.5).fit(planted.model, planted.clean)
    assert a.pruned_ == b.pruned_ and all(torch.equal(a.bounds_[k], b.bounds_[k]) for k in a.bounds_)
    assert all(torch.equal(v, b.model_.state_dict()[k]) for k, v in a.model_.state_dict().items())


def test_refuses_torchscript_and_models_without_convolutions() -> None:
    with pytest.raises(ConfigError, match="TorchScript") as err:
        build_defense("clp").fit(nn.Sequential(_scripted(_ConvBN())), _data(SHAPE))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="has none"):
        build_defense("clp").fit(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)), _data(SHAPE))


@pytest.mark.parametrize("value", [-0.5, 101, float("nan"), "three"])
def test_bad_u_is_one_line(value: object) -> None:
    with pytest.raises(ConfigError, match=r"clp\.u must be") as err:
        build_defense("clp", u=value)
    assert "\n" not in str(err.value)
