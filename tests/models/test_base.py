"""The model contract, for every registered architecture, and the model registry: names, shapes,
seeds, ``frozen`` and ``model_device``."""

from __future__ import annotations

import pytest
import torch

from perturbd.errors import ConfigError
from perturbd.models import MODELS, Classifier, default_model_name, frozen, get_model, model_device, register_model
from perturbd.models.base import PoolTo

GREY, COLOUR = (1, 28, 28), (3, 32, 32)
HEAVY = {"preact_resnet18", "tv:resnet18"}  # ~11 M parameters: smaller inputs where the size does not matter


# --- every architecture --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [GREY, COLOUR], ids=["1x28x28", "3x32x32"])
def test_finite_logits_and_features_head_split(arch, shape, build):
    model = build(arch, shape, num_classes=7).eval()
    x = torch.rand(2, *shape)
    with torch.no_grad():
        logits = model(x)
        f = model.features(x)
        split = model.head(f)
    assert isinstance(model, Classifier) and model.arch == arch
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert f.shape == (2, model.feature_dim)
    assert torch.equal(split, logits)


def test_one_training_step_reaches_every_parameter(arch, natural_shape, build):
    shape = (3, 16, 16) if arch in HEAVY else natural_shape
    model = build(arch, shape)
    x, y = torch.rand(2, *shape), torch.tensor([0, 1])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:  # a frozen parameter (whitenet's stem, its BatchNorm scales) is not trained by design
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        else:
            assert p.grad is None, pname


def test_same_seed_same_initial_weights(arch, natural_shape, build, states_equal):
    a, b, c = (build(arch, natural_shape, seed=s) for s in (3, 3, 4))
    assert states_equal(a, b)
    assert not states_equal(a, c)


def test_get_model_seed_gives_the_weights_and_the_rng_that_follow_from_it(arch, natural_shape, build, states_equal):
    a = get_model(arch, natural_shape, 10, seed=3)
    after_a = torch.rand(3)  # what draws from the global RNG next (dropout) follows from the seed too
    b = build(arch, natural_shape, seed=3)  # the same as seeding torch yourself
    after_b = torch.rand(3)
    assert states_equal(a, b) and torch.equal(after_a, after_b)
    assert not states_equal(a, get_model(arch, natural_shape, 10, seed=4))
    assert a.training and model_device(a) == torch.device("cpu")  # returned in training mode on the CPU


# --- names and shapes ----------------------------------------------------------------------------


def test_auto_picks_by_image_shape():
    assert default_model_name(GREY) == "cnn28"
    assert default_model_name(COLOUR) == "cnn32"
    assert default_model_name((1, 16, 16)) == "cnn28"
    assert default_model_name((1, 12, 12)) == "cnn32"  # too small for cnn28
    assert default_model_name((3, 64, 64)) == "cnn32"
    assert default_model_name((4, 40, 40)) == "cnn32"
    assert get_model("auto", GREY, 10).arch == "cnn28"
    assert get_model("auto", COLOUR, 10).arch == "cnn32"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("cnn_28", "did you mean 'cnn28'"), ("lenet", "did you mean 'lenet5'"), ("timm:resnet18", "prefix 'timm:'")],
)
def test_unknown_name_suggests(name, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        get_model(name, GREY, 10)
    assert "\n" not in str(err.value)


def test_unknown_name_without_close_match_lists_choices():
    with pytest.raises(ConfigError, match="choose one of: .*cnn28.*tv:<name>"):
        get_model("zzzzzz", GREY, 10)


@pytest.mark.parametrize(
    ("shape", "num_classes", "expected"),
    [((1, 3, 3), 10, "cannot take images of shape 1x3x3"), ((28, 28), 10, "three positive"), (GREY, 1, "at least 2")],
)
def test_bad_shape_or_class_count(shape, num_classes, expected):
    with pytest.raises(ConfigError, match=expected):
        get_model("cnn28", shape, num_classes)


@pytest.mark.parametrize(("shape", "num_classes"), [((1, 28.5, 28), 10), ((0, 28, 28), 10), (GREY, True), (GREY, 10.0), (GREY, "10")])
def test_non_integer_shape_or_class_count_is_refused(shape, num_classes):
    with pytest.raises(ConfigError) as err:
        get_model("cnn28", shape, num_classes)
    assert "\n" not in str(err.value)


def test_duplicate_and_reserved_registrations_raise():
    with pytest.raises(ValueError, match="already registered"):
        register_model("cnn28")(lambda shape, n: None)
    with pytest.raises(ValueError, match="reserved"):
        register_model("tv:mine")(lambda shape, n: None)


def test_uint8_input_is_refused(build):
    with pytest.raises(TypeError, match="to_float01"):
        build("cnn28")(torch.zeros(1, *GREY, dtype=torch.uint8))


class BrokenSplit(Classifier):
    """Features that are not (N, D): the contract's build-time check must catch it."""

    def __init__(self, shape, n) -> None:
        super().__init__(shape, n)
        self.body = torch.nn.Identity()  # (N, C, H, W) "features"
        self.fc = torch.nn.Linear(shape[-1], n)


def test_a_broken_features_head_split_is_refused_when_built(monkeypatch):
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))  # register for this test only
    register_model("broken")(BrokenSplit)
    with pytest.raises(ConfigError, match=r"model 'broken' gives features \(1, 1, 28, 28\) .*its features/head split is broken"):
        get_model("broken", GREY, 10)


# --- frozen, model_device, PoolTo ----------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_frozen_is_eval_without_gradients_and_restores_both(build, training):
    model = build("cnn28").train(training)
    first = next(model.parameters())
    first.requires_grad_(False)  # a layer the caller froze stays frozen
    with frozen(model) as same:
        assert same is model and not model.training and not any(m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
        x = torch.rand(2, *GREY, requires_grad=True)
        model(x).sum().backward()  # the input still gets its gradient
        assert x.grad is not None and all(p.grad is None for p in model.parameters())
    assert model.training == training and all(m.training == training for m in model.modules())
    assert not first.requires_grad and all(p.requires_grad for p in list(model.parameters())[1:])


def test_frozen_restores_on_error(build):
    model = build("cnn28").train()
    with pytest.raises(RuntimeError), frozen(model):
        raise RuntimeError("attack failed")
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_model_device():
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters


def test_pool_to_passes_a_map_of_its_size_through_and_pools_others():
    pool = PoolTo(4)
    x = torch.rand(2, 3, 4, 4)
    assert pool(x) is x
    y = torch.rand(2, 3, 8, 8)
    assert torch.equal(pool(y), torch.nn.AdaptiveAvgPool2d(4)(y)) and pool(y).shape == (2, 3, 4, 4)
    assert PoolTo((2, 3))(torch.rand(1, 1, 2, 3)).shape == (1, 1, 2, 3)
