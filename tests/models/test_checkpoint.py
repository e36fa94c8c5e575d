"""Model checkpoints: safetensors round trip with the architecture in the metadata, reproducible
bytes, wrong architecture or class count, truncated files, and no unpickling."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from perturbd.errors import CheckpointError
from perturbd.models import build_from_checkpoint, checkpoint_metadata, get_model, load_model_weights, save_model


@pytest.fixture
def cnn28_file(tmp_path, build):
    path = tmp_path / "cnn28.safetensors"
    save_model(build("cnn28"), path, {"seed": "0"})
    return path


def test_save_load_round_trip_is_bit_identical(arch, natural_shape, tmp_path, build, states_equal):
    name, shape = arch, natural_shape
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


def test_checkpoint_of_another_architecture(cnn28_file, build):
    with pytest.raises(CheckpointError, match="'cnn28'.*not 'lenet5'"):
        load_model_weights(build("lenet5"), cnn28_file)


def test_checkpoint_of_another_class_count(cnn28_file, build):
    with pytest.raises(CheckpointError, match="10 classes.*not 'cnn28' .*5 classes"):
        load_model_weights(build("cnn28", num_classes=5), cnn28_file)


def test_checkpoint_without_metadata_is_checked_by_keys_and_shapes(tmp_path, build, states_equal):
    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in build("lenet5").state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="does not fit 'cnn28'.*missing keys.*unexpected keys"):
        load_model_weights(build("cnn28"), path)
    with pytest.raises(CheckpointError, match="no arch/image_shape/num_classes metadata"):
        build_from_checkpoint(path)
    assert states_equal(load_model_weights(build("lenet5", seed=5), path), build("lenet5"))


@pytest.mark.parametrize("keep", [0.5, 0.01], ids=["cut-in-data", "cut-in-header"])
def test_truncated_checkpoint(cnn28_file, keep, build):
    data = cnn28_file.read_bytes()
    cnn28_file.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_model_weights(build("cnn28"), cnn28_file)
    assert "\n" not in str(err.value)


def test_missing_checkpoint(tmp_path, build):
    with pytest.raises(CheckpointError, match="not found"):
        load_model_weights(build("cnn28"), tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        build_from_checkpoint(tmp_path / "nope.safetensors")


class Payload:  # an arbitrary object: what an unsafe pickle would hold
    pass


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_file_is_refused(tmp_path, writer, build):
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


def test_plain_state_dict_pt_is_read_with_weights_only(tmp_path, build, states_equal):
    path = tmp_path / "model.pt"
    torch.save(build("cnn28", seed=1).state_dict(), path)
    assert states_equal(load_model_weights(build("cnn28"), path), build("cnn28", seed=1))
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_model_weights(build("cnn28"), path)


def test_text_file_is_refused(tmp_path, build):
    path = tmp_path / "model.safetensors"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_model_weights(build("cnn28"), path)


def test_save_model_checks_its_input(tmp_path, build):
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


def test_the_same_weights_give_the_same_bytes(tmp_path, build):
    a = save_model(build("cnn28", seed=3), tmp_path / "a.safetensors", {"seed": "3", "note": "x"})
    b = save_model(get_model("cnn28", (1, 28, 28), 10, seed=3), tmp_path / "b.safetensors", {"note": "x", "seed": "3"})
    assert a.read_bytes() == b.read_bytes()  # another build, the metadata in another order: same file
    c = save_model(build("cnn28", seed=4), tmp_path / "c.safetensors", {"seed": "3", "note": "x"})
    assert c.read_bytes() != a.read_bytes()
    assert not list(tmp_path.glob("*.tmp*"))  # written next to the path and renamed into place
