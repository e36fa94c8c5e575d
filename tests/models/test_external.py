"""Models perturbd did not build: TorchScript files, torchvision state dicts, Python factories."""

from __future__ import annotations

import sys

import pytest
import torch
from external_models import CLASSES, SHAPE, plain_state, resnet_files, script
from torch import nn

from perturbd.config import ModelConfig, load_config
from perturbd.data import load_data
from perturbd.errors import CheckpointError, ConfigError
from perturbd.models import ExternalModel, build_from_checkpoint, build_model, get_model, register_factory, save_model
from perturbd.models.small import SmallCNN
from perturbd.runs.experiment import run
from perturbd.runs.twins import TwinStore, twin_key
from perturbd.seeding import ADVERSARY_SEED_OFFSET

HALF = {"mean": [0.5], "std": [0.5]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return resnet_files(tmp_path_factory.mktemp("resnet"))


@pytest.fixture(scope="module")
def reference():
    return get_model("tv:resnet18", SHAPE, CLASSES, seed=0).eval()


def spec(files, kind: str, **extra) -> ModelConfig:
    if kind == "scripted":
        return ModelConfig(name=f"torchscript:{files[kind]}", **HALF, **extra)
    stated = {} if kind == "own" else HALF  # a perturbd checkpoint is normalised as recorded
    return ModelConfig(name="tv:resnet18", weights=files[kind], **stated, **extra)


@pytest.mark.parametrize("kind", ["own", "plain", "wrapped", "parallel", "scripted"])
def test_every_format_gives_the_same_features_and_logits(files, reference, kind):
    model = build_model(spec(files, kind), SHAPE, CLASSES).eval()
    x = torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.features(x), reference.features(x)), "the final layer's input, bit for bit"
        assert torch.equal(model(x), reference(x))
        assert torch.equal(model.head(model.features(x)), model(x)), "head() is the final linear layer"


@pytest.mark.parametrize("layer", ["layer4", "avgpool", "layer3.1"])
def test_a_named_layer_reads_the_same_from_a_hook_and_from_torchscript(files, layer):
    eager = build_model(spec(files, "plain", features=layer), SHAPE, CLASSES).eval()
    scripted = build_model(spec(files, "scripted", features=layer), SHAPE, CLASSES).eval()
    net = eager.body
    x = torch.rand(3, *SHAPE)
    with torch.no_grad():
        f = eager.features(x)
        assert torch.equal(f, scripted.features(x))
        want = net.avgpool(net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(eager.normalize(x))))))))))
        if layer == "avgpool":
            assert torch.equal(f, want.flatten(1))
        assert torch.equal(eager(x), scripted(x)), "the logits do not move"
    with pytest.raises(ConfigError, match="head\\(\\)"):
        eager.head(f)


@pytest.mark.parametrize("kind", ["plain", "scripted"])
def test_an_unknown_layer_is_one_line_listing_the_layers(files, kind):
    with pytest.raises(ConfigError, match="has no layer 'layer5'; its layers: conv1, bn1, relu, maxpool, layer1, layer1.0") as err:
        build_model(spec(files, kind, features="layer5"), SHAPE, CLASSES)
    assert "\n" not in str(err.value)


def test_weights_of_another_class_count_need_replace_head(files, tmp_path):
    pretrained = get_model("tv:resnet18", SHAPE, 5, seed=3)
    torch.save(plain_state(pretrained), tmp_path / "pretrained.pt")
    with pytest.raises(CheckpointError, match="final layer 'fc' gives 5 classes, the data has 3; set model.replace_head=true"):
        build_model(ModelConfig(name="tv:resnet18", weights=tmp_path / "pretrained.pt"), SHAPE, CLASSES)
    victim = build_model(ModelConfig(name="tv:resnet18", weights=tmp_path / "pretrained.pt", replace_head=True), SHAPE, CLASSES, seed=7)
    fresh = get_model("tv:resnet18", SHAPE, CLASSES, seed=7)
    mine, theirs = victim.state_dict(), pretrained.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if k.startswith("body.")), "the pretrained body is kept"
    assert torch.equal(mine["fc.weight"], fresh.state_dict()["fc.weight"]), "a new final layer, drawn from the seed"


def test_input_range_mean_and_std_are_applied_and_recorded(tmp_path):
    cfg = ModelConfig(name="tv:resnet18", input_range=(0, 255), mean=[120.0, 110.0, 100.0], std=[60.0])
    model = build_model(cfg, SHAPE, CLASSES, seed=0)
    x = torch.ones(1, *SHAPE)
    assert torch.allclose(model.normalize(x)[0, :, 0, 0], torch.tensor([135 / 60, 145 / 60, 155 / 60]))
    again = build_from_checkpoint(save_model(model, tmp_path / "m.safetensors"))
    assert again.input_spec == model.input_spec and torch.equal(again.normalize(x), model.normalize(x))
    with pytest.raises(ConfigError, match="model.mean has 2 values for images of 3 channel"):
        build_model(ModelConfig(name="tv:resnet18", mean=[1.0, 2.0]), SHAPE, CLASSES)
    partly = build_model(ModelConfig(name="cnn28", mean=[0.25]), (1, 28, 28), 10)
    assert partly.input_spec == {"input_range": [0.0, 1.0], "mean": [0.25], "std": [0.5]}, "what is not stated keeps cnn28's own"


def test_grey_images_reach_an_rgb_network_through_three_channel_statistics(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    path = script(net, tmp_path / "rgb.pt")
    with pytest.raises(ConfigError, match="cannot take images of shape 1x28x28"):
        build_model(ModelConfig(name=f"torchscript:{path}"), (1, 28, 28), 10)
    model = build_model(ModelConfig(name=f"torchscript:{path}", mean=[0.5, 0.5, 0.5], std=[0.25]), (1, 28, 28), 10)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10) and model.features(torch.rand(2, 1, 28, 28)).shape == (2, 4)


def test_a_network_of_another_class_count_is_refused_when_built(tmp_path):
    path = script(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 7)), tmp_path / "seven.pt")
    with pytest.raises(ConfigError, match="gives 7 logits but the data has 10 classes"):
        build_model(ModelConfig(name=f"torchscript:{path}"), (1, 28, 28), 10)


class Doubled(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def scaled_net(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 16), nn.ReLU(), nn.Linear(16, num_classes), Doubled())


def make_cnn28(image_shape, num_classes):
    return SmallCNN(image_shape, num_classes)


def test_a_factory_gets_the_keywords_it_declares_and_is_seeded_like_get_model():
    name = register_factory(make_cnn28)
    assert name == f"factory:{__name__}:make_cnn28"
    model = build_model(ModelConfig(name=name), (1, 28, 28), 10, seed=4)
    own = get_model("cnn28", (1, 28, 28), 10, seed=4)
    assert isinstance(model, ExternalModel) and model.splits
    assert all(torch.equal(a, b) for a, b in zip(model.net.state_dict().values(), own.state_dict().values()))
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), own.eval()(x)), "SmallCNN normalises itself; nothing is stated"


def test_a_network_whose_last_linear_layer_is_not_its_output_does_not_split():
    model = build_model(ModelConfig(name=register_factory(scaled_net)), (1, 28, 28), 10)
    assert not model.splits and model.features(torch.rand(2, 1, 28, 28)).shape == (2, 16)
    with pytest.raises(ConfigError, match="does not split"):
        model.head(torch.zeros(2, 16))


def test_register_factory_refuses_what_has_no_name(tmp_path):
    with pytest.raises(ConfigError, match="top level of a module"):
        register_factory(lambda: nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="an nn.Module instance"):
        register_factory(nn.Linear(2, 2))


def test_a_factory_named_in_the_config_is_imported(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text("import torch.nn as nn\ndef tiny():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model(ModelConfig(name="factory:my_nets:tiny"), (1, 28, 28), 10)
    assert model(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    sys.modules.pop("my_nets", None)
    for name, message in (
        ("factory:no_such_mod:f", "cannot import 'no_such_mod'"),
        ("factory:my_nets:nope", "has no 'nope'"),
        ("factory:my_nets", "factory:package.module:function"),
    ):
        with pytest.raises(ConfigError, match=message):
            build_model(ModelConfig(name=name), (1, 28, 28), 10)


def test_a_factory_in_the_current_folder_is_found(tmp_path, monkeypatch):
    (tmp_path / "here_nets.py").write_text(
        "import torch.nn as nn\ndef tiny():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n"
    )
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    assert build_model(ModelConfig(name="factory:here_nets:tiny"), (1, 28, 28), 10)(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    sys.modules.pop("here_nets", None)


def test_checkpoints_of_user_code_are_not_loaded_on_the_files_word(tmp_path):
    model = build_model(ModelConfig(name=register_factory(make_cnn28)), (1, 28, 28), 10)
    with pytest.raises(CheckpointError, match="name it yourself"):
        build_from_checkpoint(save_model(model, tmp_path / "f.safetensors"))


def test_torchscript_and_weights_are_one_or_the_other(files):
    with pytest.raises(ValueError, match="holds its own weights"):
        ModelConfig(name=f"torchscript:{files['scripted']}", weights=files["plain"])
    with pytest.raises(CheckpointError, match="not a TorchScript file"):
        build_model(ModelConfig(name=f"torchscript:{files['plain']}"), SHAPE, CLASSES)


def test_the_twin_key_names_the_factory_and_the_weights_content(tmp_path):
    data = load_data(load_config(overrides=["data.train_limit=100", "data.test_limit=20"]).data).train
    cpu = torch.device("cpu")
    keys = {twin_key(load_config(overrides=[f"model.name={name}"]), data, cpu) for name in ("cnn28", register_factory(make_cnn28))}
    assert len(keys) == 2
    weights = tmp_path / "w.pt"
    torch.save(get_model("cnn28", (1, 28, 28), 10, seed=0).state_dict(), weights)
    first = twin_key(load_config(overrides=[f"model.weights={weights}"]), data, cpu)
    torch.save(get_model("cnn28", (1, 28, 28), 10, seed=1).state_dict(), weights)
    assert twin_key(load_config(overrides=[f"model.weights={weights}"]), data, cpu) != first, "same path, other weights"


# --- end to end: perturbd.run(cfg, model=...) and pretrained victims --------------------------------

SEEDS: list[int] = []


def counted_cnn28(image_shape, num_classes):
    SEEDS.append(torch.initial_seed())
    return SmallCNN(image_shape, num_classes)


@pytest.mark.slow
def test_a_factory_model_gives_the_metrics_of_the_registered_one(tiny_config, tmp_path):
    own = run(tiny_config, tmp_path / "own")
    theirs = run(tiny_config, tmp_path / "factory", model=make_cnn28)
    assert own.metrics.attack_success_rate > 0.8, "a backdoor worth comparing"
    assert theirs.metrics.model_dump(exclude={"config_hash"}) == own.metrics.model_dump(exclude={"config_hash"})
    assert theirs.metrics.config_hash != own.metrics.config_hash, "the factory is named in the config, so in the hash"
    assert f"name: factory:{__name__}:make_cnn28" in (theirs.run_dir / "config.yaml").read_text()


def test_the_factory_is_called_once_per_model_trained_with_its_seed(tiny_overrides, tmp_path):
    SEEDS.clear()
    static = [s for s in tiny_overrides if not s.startswith("trigger.amplitude")]  # an adaptive mask has no amplitude
    cfg = load_config(overrides=[*static, "train.epochs=1", "data.train_limit=300", "attack.knowledge=model", "attack.surrogate_steps=5",
                                 "seed=3", "trigger.kind=adaptive", "trigger.samples=20", "trigger.passes=1",
                                 "trigger.max_steps=2"])  # fmt: skip
    run(cfg, tmp_path, model=counted_cnn28)
    assert sorted(SEEDS[1:]) == [3, 3, 3 + ADVERSARY_SEED_OFFSET], "twin, backdoored, the adversary's (after one unseeded check)"


def test_an_update_from_pretrained_weights_with_a_new_head(tiny_overrides, tmp_path):
    torch.save(get_model("cnn28", (1, 28, 28), 5, seed=9).state_dict(), tmp_path / "pretrained.pt")
    sets = [
        *tiny_overrides,
        "train.epochs=1",
        "data.train_limit=400",
        "attack.setting=update",
        "attack.update_size=100",
        f"model.weights={tmp_path / 'pretrained.pt'}",
    ]
    with pytest.raises(CheckpointError, match="replace_head"):
        run(load_config(overrides=sets), tmp_path / "runs")
    result = run(load_config(overrides=[*sets, "model.replace_head=true"]), tmp_path / "runs")
    assert result.metrics.before_update is not None and result.metrics.update.batch_size == 100


def test_an_update_can_start_from_pretrained_weights_directly(tmp_path):
    pretrained = get_model("tv:resnet18", SHAPE, 5, seed=3)
    torch.save(plain_state(pretrained), tmp_path / "pre.pt")
    sets = ["model.name=tv:resnet18", "model.replace_head=true", "attack.setting=update", f"attack.checkpoint={tmp_path / 'pre.pt'}"]
    pre = TwinStore().checkpoint(load_config(overrides=sets), SHAPE, CLASSES).model
    assert torch.equal(pre.state_dict()["body.conv1.weight"], pretrained.state_dict()["body.conv1.weight"])
    assert pre.fc.out_features == CLASSES and pre.input_spec == {"input_range": [0.0, 1.0], "mean": [0.0], "std": [1.0]}, (
        "third-party weights: no normalisation"
    )
