"""NAD: the attention term removes what plain fine-tuning only dents, the attention map as the
authors compute it, the stages found on every architecture, one-line mistakes, same seed ⇒ same
weights."""

from __future__ import annotations

import copy

import pytest
import torch

from perturbd.data.dataset import ImageDataset
from perturbd.defenses import build_defense, nad
from perturbd.defenses.nad import attention, stages
from perturbd.errors import ConfigError
from perturbd.evaluation import evaluate_defense
from perturbd.models import get_model, list_models

ARCHS = [*list_models(), "tv:resnet18"]
SHAPE = (3, 16, 16)  # tiny: every registered model takes it
STAGES = {"preact_resnet18": ["body.layer1", "body.layer2", "body.layer3", "body.layer4"]}
STAGES["tv:resnet18"] = STAGES["preact_resnet18"]
# the same budget and schedule for NAD and plain fine-tuning (NAD's teacher is that fine-tuning)
TUNING = {"n_clean": 300, "epochs": 10, "lr": 0.1}


def test_removes_what_fine_tuning_only_dents(mitigates, planted) -> None:
    r = mitigates("nad", {**TUNING, "teacher_epochs": 10, "betas": [5000, 5000]}, 0.5)
    plain = evaluate_defense(build_defense("fine_tuning", **TUNING), planted.inputs())
    assert plain.metrics["asr_after"] > 0.75, "plain fine-tuning with the same budget only dents the patch"
    assert r.metrics["asr_after"] < plain.metrics["asr_after"] - 0.3, "the attention term is what removes it"
    assert r.metrics["robust_accuracy_after"] > r.metrics["robust_accuracy_before"] + 0.3
    assert r.metrics["layers"] == ["body.2", "body.6"] and r.metrics["betas"] == [5000, 5000]


def test_the_attention_map_is_the_authors() -> None:
    g = torch.Generator().manual_seed(0)
    fm = torch.randn(2, 4, 3, 3, generator=g)
    am = torch.pow(torch.abs(fm), 2).sum(1, keepdim=True)  # bboylyg/NAD at.py, as written there
    am = am / (torch.norm(am, dim=(2, 3), keepdim=True) + 1e-6)
    assert torch.allclose(attention(fm, 2.0), am.flatten(1), atol=1e-7)
    assert torch.allclose(attention(fm, 1.0).norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_stages_and_a_fit_on_every_architecture(arch: str) -> None:
    model = get_model(arch, SHAPE, 10, seed=0)
    images = torch.randint(0, 256, (24, *SHAPE), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    found = stages(model, images[:2])
    assert len(found) >= 2 and found == STAGES.get(arch, found)
    modules = dict(model.named_modules())
    assert all(n in modules for n in found)
    clean = ImageDataset(images, torch.arange(24) % 10, tuple(map(str, range(10))), "noise")
    d = build_defense("nad", n_clean=24, epochs=1, teacher_epochs=1, batch_size=8).fit(model, clean)
    assert d.layers_ == found[-3:] and len(d.betas_) == len(d.layers_)
    assert torch.isfinite(d.model_(torch.rand(2, *SHAPE))).all()
    assert all(not m._forward_hooks for m in d.model_.modules()), "no hook is left on the repaired model"


def test_named_layers_and_one_line_mistakes(planted) -> None:
    d = build_defense("nad", n_clean=64, epochs=1, teacher_epochs=1, batch_size=16, layers=["body.6"], betas=[2000])
    assert d.fit(planted.model, planted.clean).layers_ == ["body.6"]
    cases = [
        ({"layers": ["body.2", "body.6"], "betas": [1000]}, "names 2 layers but nad.betas has 1 weights"),
        ({"layers": ["body.99"], "betas": [1000]}, "has no layer 'body.99'; its layers: body, body.0"),
    ]
    for params, what in cases:
        with pytest.raises(ConfigError, match=what) as err:
            build_defense("nad", n_clean=64, epochs=1, teacher_epochs=1, **params).fit(planted.model, planted.clean)
        assert "\n" not in str(err.value)
    bad = [({"betas": [-1]}, "nad.betas"), ({"betas": []}, "nad.betas"), ({"clean_share": 0}, r"nad.clean_share must be in \(0, 1\]")]
    for params, what in bad:
        with pytest.raises(ConfigError, match=what):
            build_defense("nad", **params)
    scripted = torch.jit.trace(copy.deepcopy(planted.model).eval(), torch.rand(2, *planted.test.image_shape))
    with pytest.raises(ConfigError, match="TorchScript model does not take; give its state dict"):
        build_defense("nad", n_clean=64).fit(scripted, planted.clean)


def test_the_clean_budget_is_five_percent_of_the_clean_images(planted) -> None:
    d = build_defense("nad", epochs=1, teacher_epochs=1, batch_size=16).fit(planted.model, planted.clean)
    assert d.clean_used_ == round(0.05 * len(planted.clean))


def test_same_seed_same_weights(planted) -> None:
    def weights(seed: int) -> torch.Tensor:
        d = build_defense("nad", n_clean=64, epochs=1, teacher_epochs=1, batch_size=16, seed=seed).fit(planted.model, planted.clean)
        return torch.cat([p.detach().flatten() for p in d.model_.parameters()])

    assert torch.equal(weights(3), weights(3))
    assert not torch.equal(weights(3), weights(4))


def test_docstring_names_whose_defaults_and_the_departures() -> None:
    doc = " ".join((nad.__doc__ or "").split())
    assert "bboylyg/NAD" in doc and "BackdoorBench" in doc and "5 %" in doc and "Departure" in doc
    assert build_defense("nad").get_params() | {"seed": None} == {
        "n_clean": None, "clean_share": 0.05, "epochs": 20, "teacher_epochs": 10, "lr": 0.01, "batch_size": 64,
        "betas": [500.0, 1000.0, 1000.0], "layers": None, "p": 2.0, "seed": None,
    }  # fmt: skip
