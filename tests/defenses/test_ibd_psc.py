"""IBD-PSC as the authors' code runs it: the last BatchNorm layers amplified, the start depth
chosen from clean images, PSC the mean probability of the original label; it separates triggered
inputs on a backdoored network with several BatchNorm layers, on any architecture and wrapped model.

The planted 2-conv net (two BatchNorm layers) gives IBD-PSC little to work with: amplifying both
by 1.5 (or by 10) leaves its clean error near 0, it mostly sharpens the softmax, and clean and
triggered inputs alike keep a PSC near 1 (measured: AUROC 0.687, FPR 1.00 at T = 0.9). The
separation test trains a six-BatchNorm net on the same poisoned set instead, where it works
(AUROC 0.935; 0.432 on its clean twin trained on the defender's clean images).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import perturbd
from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses import build_defense
from perturbd.defenses.ibd_psc import IbdPsc, amplifiable_layers, amplified
from perturbd.errors import ConfigError
from perturbd.evaluation.harness import evaluate_defense
from perturbd.metrics import attack_success_rate, clean_accuracy
from perturbd.models import Classifier, get_model, list_models
from perturbd.train import fit
from tests.planted import TARGET, TRAIN, Planted


class DeepNet(Classifier):
    """Six conv3×3 → BatchNorm → ReLU blocks (widths 8, 16, 16, 32, 32, 32; max-pool after every
    second), global average pool (features), fc (head)."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__(image_shape, num_classes)
        layers: list[nn.Module] = []
        c = image_shape[0]
        for i, w in enumerate((8, 16, 16, 32, 32, 32)):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()] + ([nn.MaxPool2d(2)] if i % 2 else [])
            c = w
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c, num_classes)


@pytest.fixture(scope="module")
def deep(planted: Planted) -> Planted:
    """The planted poisoned set (3×3 patch, 3 %, target 0) trained into :class:`DeepNet` (no clean twin)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DeepNet(planted.train.image_shape, 10)
    fit(model, planted.train, TRAIN, 0)
    assert attack_success_rate(model, planted.test, planted.trigger, TARGET) > 0.9
    assert clean_accuracy(model, planted.test) > 0.9
    return Planted(model, None, planted.trigger, planted.train, planted.indices, planted.test, planted.clean)  # type: ignore[arg-type]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_defaults_are_the_papers() -> None:
    d = IbdPsc()
    assert (d.n, d.xi, d.scale, d.T, d.threshold) == (5, 0.6, 1.5, 0.9, "fixed")


def test_separates_triggered_inputs_on_a_deep_batchnorm_net(deep: Planted) -> None:
    r = evaluate_defense(build_defense("ibd_psc", n_clean=200), deep.inputs(clean_model=None), eval_limit=200)
    m = r.metrics
    # measured: AUROC 0.935, TPR 0.94 / FPR 0.69 at T = 0.9; every depth stays under ξ (start 6 of 6)
    assert m["auroc"] > 0.85, r.cell["text"]
    assert m["tpr"] > 0.9 and m["layer_type"] == "BatchNorm" and m["amplifiable_layers"] == 6
    assert m["threshold"] == 0.9 and m["calibration_images"] == 200


def test_psc_is_the_mean_probability_of_the_original_label_under_amplification(deep: Planted) -> None:
    model = deep.model
    before = _state(model)
    d = build_defense("ibd_psc", n_clean=100, n=3, xi=0.2).fit(model, deep.clean)
    images = deep.clean.images[100:140]
    psc = d.score(images)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the model is left as it was"
    x = to_float01(images)
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)][::-1]  # last first
        by_hand = torch.zeros(len(x), dtype=torch.float64)
        for j in range(3):
            copy_ = copy.deepcopy(model)
            names = [m for m in copy_.modules() if isinstance(m, nn.BatchNorm2d)][::-1][: d.start_ + 1 + j]
            for m in names:
                m.weight *= 1.5
                m.bias *= 1.5
            by_hand += copy_(x).double().softmax(1)[torch.arange(len(x)), pred]
    assert len(bns) == 6 and d.layers_[0] == "body.18"
    assert torch.allclose(psc, by_hand / 3, atol=1e-6)


def test_start_depth_is_the_fewest_layers_whose_amplification_errs_beyond_xi(deep: Planted) -> None:
    clean = deep.clean.subset(torch.arange(100))
    _, layers = amplifiable_layers(deep.model)
    errors = []
    for k in range(1, len(layers) + 1):
        with amplified([m for _, m in layers[:k]], 1.5), torch.no_grad():
            errors.append(float((deep.model.eval()(to_float01(clean.images)).argmax(1) != clean.labels).float().mean()))
    for xi in (0.05, 0.2, 0.99):
        d = build_defense("ibd_psc", n_clean=100, xi=xi).fit(deep.model, clean)
        beyond = [k for k, e in enumerate(errors, start=1) if e > xi]
        assert d.start_ == (beyond[0] if beyond else len(layers)), (xi, errors)
        assert d.facts_["start_error"] == round(errors[d.start_ - 1], 4)


def test_frr_threshold_is_the_clean_quantile(deep: Planted) -> None:
    d = build_defense("ibd_psc", n_clean=200, threshold="frr", frr=0.05).fit(deep.model, deep.clean)
    assert d.threshold_ == pytest.approx(float(torch.quantile(d.scores_.double(), 0.95)))
    assert torch.equal(d.flagged_, d.scores_ > d.threshold_) and d.facts_["calibration_fpr"] <= 0.05
    images = deep.test.images[:30]
    assert torch.equal(d.flag(images), d.flag_scores(d.score(images)))


def test_same_inputs_same_scores(planted: Planted) -> None:
    a = build_defense("ibd_psc", n_clean=64).fit(planted.model, planted.clean)
    b = build_defense("ibd_psc", n_clean=64).fit(planted.model, planted.clean)
    assert torch.equal(a.scores_, b.scores_) and a.threshold_ == b.threshold_ and a.start_ == b.start_


@pytest.mark.parametrize("arch", [*list_models(), "tv:resnet18"])
def test_runs_on_every_architecture(arch: str) -> None:
    shape = (1, 28, 28) if arch in ("cnn28", "lenet5", "lenet5_valid") else (3, 32, 32)
    model = get_model(arch, shape, 10, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.randint(0, 256, (8, *shape), generator=g, dtype=torch.uint8), torch.arange(8) % 10, tuple("0123456789"))
    d = build_defense("ibd_psc", n_clean=8, n=2, batch_size=4).fit(model, data)
    assert d.facts_["layer_type"] == ("Conv2d" if arch.startswith("lenet5") else "BatchNorm")
    assert bool(((d.scores_ >= 0) & (d.scores_ <= 1)).all()) and len(d.scores_) == 8


def test_a_wrapped_user_model_and_a_torchscript_one() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).eval()
    data = ImageDataset(torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8), torch.arange(6), tuple("0123456789"))
    wrapped = build_defense("ibd_psc", n_clean=6).fit(perturbd.wrap(net, (1, 28, 28)), data)
    assert wrapped.layers_ == ["net.1"] and wrapped.facts_["layer_type"] == "BatchNorm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
        compiled = torch.jit.script(net)
    scripted = build_defense("ibd_psc", n_clean=6).fit(perturbd.wrap(compiled, (1, 28, 28)), data)
    assert scripted.layers_ == ["net.1"] and torch.allclose(scripted.scores_, wrapped.scores_)


def test_a_model_with_nothing_to_amplify_is_a_one_line_error() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    data = ImageDataset(torch.zeros(4, 1, 4, 4, dtype=torch.uint8), torch.arange(4) % 3, ("a", "b", "c"))
    with pytest.raises(ConfigError, match=r"^ibd_psc needs a model with BatchNorm or Conv2d layers") as err:
        build_defense("ibd_psc").fit(net, data)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("key,value", [("T", 1.5), ("scale", 1.0), ("n", 0), ("threshold", "auto")])
def test_bad_parameters_are_one_line_errors(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^ibd_psc\.{key} must be") as err:
        build_defense("ibd_psc", **{key: value})
    assert "\n" not in str(err.value)
