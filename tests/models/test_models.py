"""Contract tests for every registered model, plus checkpoint reading and writing."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from perturbd.errors import CheckpointError, ConfigError
from perturbd.models import (
    Classifier,
    build_from_checkpoint,
    checkpoint_metadata,
    default_model_name,
    get_model,
    list_models,
    load_model_weights,
    register_model,
    save_model,
)

GREY, COLOUR = (1, 28, 28), (3, 32, 32)
ARCHS = [*list_models(), "tv:resnet18"]
# Each architecture at the shape it is meant for (small and fast); the others also get the other shape.
NATURAL = {"cnn28": GREY, "lenet5": GREY}
HEAVY = {"preact_resnet18", "tv:resnet18"}  # ~11 M parameters: smaller inputs where the size does not matter


def natural(name: str) -> tuple[int, int, int]:
    return NATURAL.get(name, COLOUR)


def build(name: str, shape: tuple[int, int, int] = GREY, num_classes: int = 10, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return get_model(name, shape, num_classes)


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def cnn28_file(tmp_path):
    path = tmp_path / "cnn28.safetensors"
    save_model(build("cnn28"), path, {"seed": "0"})
    return path


# --- every architecture --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [GREY, COLOUR], ids=["1x28x28", "3x32x32"])
@pytest.mark.parametrize("name", ARCHS)
def test_finite_logits_and_features_head_split(name, shape):
    model = build(name, shape, num_classes=7).eval()
    x = torch.rand(2, *shape)
    with torch.no_grad():
        logits = model(x)
        f = model.features(x)
        split = model.head(f)
    assert isinstance(model, Classifier) and model.arch == name
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert f.shape == (2, model.feature_dim)
    assert torch.equal(split, logits)


@pytest.mark.parametrize("name", ARCHS)
def test_one_training_step_reaches_every_parameter(name):
    shape = (3, 16, 16) if name in HEAVY else natural(name)
    model = build(name, shape)
    x, y = torch.rand(2, *shape), torch.tensor([0, 1])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ARCHS)
def test_same_seed_same_initial_weights(name):
    a, b, c = (build(name, natural(name), seed=s) for s in (3, 3, 4))
    assert states_equal(a, b)
    assert not states_equal(a, c)


@pytest.mark.parametrize("name", ARCHS)
def test_save_load_round_trip_is_bit_identical(name, tmp_path):
    shape = natural(name)
    model = build(name, shape, num_classes=5, seed=1)
    with torch.no_grad():  # move BatchNorm statistics off their defaults so they are checked too
        model.train()(torch.rand(2, *shape))
    path = save_model(model, tmp_path / "m.safetensors", {"seed": "1", "note": "round trip"})

    fresh = load_model_weights(build(name, shape, num_classes=5, seed=2), path)
    rebuilt = build_from_checkpoint(path)
    assert states_equal(model, fresh) and states_equal(model, rebuilt)
    assert (rebuilt.arch, rebuilt.image_shape, rebuilt.num_classes) == (name, shape, 5)
    x = torch.rand(2, *shape)
    assert torch.equal(model.eval()(x), rebuilt.eval()(x))
    meta = checkpoint_metadata(path)
    assert meta["arch"] == name and meta["num_classes"] == "5" and meta["note"] == "round trip"


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
    [("cnn_28", "did you mean 'cnn28'"), ("lenet", "did you mean 'lenet5'"), ("tv:resnt18", "did you mean 'tv:resnet18'"), ("timm:resnet18", "prefix 'timm:'")],
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


def test_tv_models_refuse_other_channel_counts():
    with pytest.raises(ConfigError, match="1 or 3 image channels, got 4"):
        get_model("tv:resnet18", (4, 32, 32), 10)


def test_duplicate_and_reserved_registrations_raise():
    with pytest.raises(ValueError, match="already registered"):
        register_model("cnn28")(lambda shape, n: None)
    with pytest.raises(ValueError, match="reserved"):
        register_model("tv:mine")(lambda shape, n: None)


def test_uint8_input_is_refused():
    with pytest.raises(TypeError, match="to_float01"):
        build("cnn28")(torch.zeros(1, *GREY, dtype=torch.uint8))


# --- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_of_another_architecture(cnn28_file):
    with pytest.raises(CheckpointError, match="'cnn28'.*not 'lenet5'"):
        load_model_weights(build("lenet5"), cnn28_file)


def test_checkpoint_of_another_class_count(cnn28_file):
    with pytest.raises(CheckpointError, match="10 classes.*not 'cnn28' .*5 classes"):
        load_model_weights(build("cnn28", num_classes=5), cnn28_file)


def test_checkpoint_without_metadata_is_checked_by_keys_and_shapes(tmp_path):
    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in build("lenet5").state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="does not fit 'cnn28'.*missing keys.*unexpected keys"):
        load_model_weights(build("cnn28"), path)
    with pytest.raises(CheckpointError, match="no arch/image_shape/num_classes metadata"):
        build_from_checkpoint(path)
    assert states_equal(load_model_weights(build("lenet5", seed=5), path), build("lenet5"))


@pytest.mark.parametrize("keep", [0.5, 0.01], ids=["cut-in-data", "cut-in-header"])
def test_truncated_checkpoint(cnn28_file, keep):
    data = cnn28_file.read_bytes()
    cnn28_file.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_model_weights(build("cnn28"), cnn28_file)
    assert "\n" not in str(err.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model_weights(build("cnn28"), tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        build_from_checkpoint(tmp_path / "nope.safetensors")


class Payload:  # an arbitrary object: what an unsafe pickle would hold
    pass


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_file_is_refused(tmp_path, writer):
    path = tmp_path / "model.pt"
    obj = {"weights": Payload()}
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj))
    with pytest.raises(CheckpointError, match="only .safetensors weights are read; convert"):
        load_model_weights(build("cnn28"), path)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        build_from_checkpoint(path)


def test_plain_state_dict_pt_is_read_with_weights_only(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(build("cnn28", seed=1).state_dict(), path)
    assert states_equal(load_model_weights(build("cnn28"), path), build("cnn28", seed=1))
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_model_weights(build("cnn28"), path)


def test_text_file_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_model_weights(build("cnn28"), path)


def test_save_model_checks_its_input(tmp_path):
    with pytest.raises(TypeError, match="str to str"):
        save_model(build("cnn28"), tmp_path / "m.safetensors", {"seed": 0})
    with pytest.raises(ValueError, match="reserved"):
        save_model(build("cnn28"), tmp_path / "m.safetensors", {"arch": "lenet5"})
    with pytest.raises(TypeError, match="built by get_model"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "m.safetensors")
    assert not list(tmp_path.iterdir())


def test_build_from_checkpoint_leaves_the_global_rng_alone(cnn28_file):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_from_checkpoint(cnn28_file)
    assert torch.equal(torch.rand(3), expected)
