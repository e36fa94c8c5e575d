"""Fine-pruning: the representation found on every architecture, channels masked exactly to zero
(and kept there through fine-tuning), the count set by the paper's accuracy rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from perturbd.defenses import build_defense
from perturbd.defenses.fine_pruning import ChannelMask, last_representation
from perturbd.errors import ConfigError
from perturbd.models import get_model, list_models

ARCHS = [*list_models(), "tv:resnet18"]
SHAPE = (3, 16, 16)  # tiny: every registered model takes it
STAGE_OUTPUT = {"preact_resnet18": "body.layer4", "tv:resnet18": "body.layer4"}  # after the last residual addition


def _outputs(module: nn.Module) -> tuple[list[torch.Tensor], RemovableHandle]:
    seen: list[torch.Tensor] = []
    return seen, module.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))


@pytest.mark.parametrize("arch", ARCHS)
def test_pruning_the_found_layer_reaches_the_head(arch: str) -> None:
    torch.manual_seed(0)
    model = get_model(arch, SHAPE, 10, seed=0).eval()
    x = torch.rand(4, *SHAPE)
    name, module, channels = last_representation(model, x[:2])
    assert channels > 1 and model.get_submodule(name) is module
    assert name == STAGE_OUTPUT.get(arch, name)
    with torch.no_grad():
        before = model(x)
        mask = ChannelMask(channels)
        module.register_forward_hook(mask)
        seen, handle = _outputs(module)  # registered after the mask: sees the masked output
        half = torch.arange(0, channels, 2)
        mask.prune(half)
        model(x)
        assert float(seen[-1][:, half].abs().max()) == 0.0, "pruned channels are exactly zero"
        assert float(seen[-1].abs().sum()) > 0, "the other channels are not"
        mask.prune(torch.arange(channels))
        after = model(x)
        features = model.features(x)
        handle.remove()
    assert not torch.allclose(before, after), "pruning every channel changes the logits"
    # nothing but the found layer reaches the head: all of it pruned, the features are constant
    # (for the residual nets: the layer is after the last residual addition, not a branch of it)
    assert torch.allclose(features, features[:1].expand_as(features))


def test_a_model_without_a_spatial_activation_is_a_one_line_error() -> None:
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    with pytest.raises(ConfigError, match="needs a model with a spatial"):
        last_representation(flat, torch.rand(2, *SHAPE))


def test_removes_the_planted_backdoor(mitigates) -> None:
    mitigates("fine_pruning", {"n_clean": 1000}, 0.5)


def test_count_follows_the_accuracy_rule(planted) -> None:
    d = build_defense("fine_pruning", n_clean=300, epochs=1).fit(planted.model, planted.clean)
    curve = dict(d.curve_)
    count, drop = len(d.pruned_), d.max_accuracy_drop
    assert curve[0] == d.base_accuracy_ and curve[count] == d.pruned_accuracy_
    assert d.base_accuracy_ - d.pruned_accuracy_ <= drop
    assert count == len(d.activation_) or d.base_accuracy_ - curve[count + 1] > drop, "the next count breaks the rule"
    assert len(curve) <= 8, "bisection, not every count"
    # the pruned channels are the least active, by the layer's own mean output
    assert sorted(torch.argsort(d.activation_, stable=True)[:count].tolist()) == d.pruned_
    assert d.facts_ == {
        "layer": d.layer_, "channels": len(d.activation_), "pruned": count, "validation_accuracy_unpruned": d.base_accuracy_,
        "validation_accuracy_pruned": d.pruned_accuracy_, "summary": f"pruned {count}/{len(d.activation_)} channels of {d.layer_}",
    }  # fmt: skip


def test_fixed_ratio_and_pruned_channels_stay_zero_after_tuning(planted) -> None:
    d = build_defense("fine_pruning", n_clean=128, epochs=1, ratio=0.5).fit(planted.model, planted.clean)
    module = d.model_.get_submodule(d.layer_)
    assert len(d.pruned_) == len(d.activation_) // 2
    seen, handle = _outputs(module)
    with torch.no_grad():
        d.model_(planted.clean.images[:32].float() / 255)
    handle.remove()
    # the capture hook runs after the mask hook that fine-tuning trained under
    assert float(seen[-1][:, d.pruned_].abs().max()) == 0.0
    assert 0.0 <= d.pruned_accuracy_ <= 1.0
