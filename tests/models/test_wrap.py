"""A model object from Python: perturbd.wrap states its input and feature layer; perturbd.run takes a
functools.partial factory (its arguments in model.kwargs), an nn.Module instance (deep-copied for
every model built) or timm.create_model; factory: names with missing arguments are one line."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
import yaml
from torch import nn

import perturbd
from perturbd.config import ModelConfig, load_config
from perturbd.errors import ConfigError
from perturbd.models import ExternalModel, build_model, model_section, register_module
from perturbd.models.small import SmallCNN

# a whole run in seconds: 300 synthetic bars, one epoch, an obvious patch
QUICK = [
    "data.name=synthetic", "data.train_limit=300", "data.test_limit=100", "train.epochs=1", "train.batch_size=50",
    "train.device=cpu", "train.threads=1", "trigger.kind=patch", "trigger.amplitude=255", "poison.rate=0.1",
]  # fmt: skip


def test_wrap_states_the_input_and_splits_at_the_last_linear_layer():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=7)
    model = perturbd.wrap(net, (3, 32, 32), input_range=(0, 255), mean=[120.0, 110.0, 100.0], std=[60.0])
    assert model.num_classes == 7 and model.splits and model.feature_dim == 512 and model.net is net
    x = torch.rand(2, 3, 32, 32)
    want = (x * 255 - torch.tensor([120.0, 110.0, 100.0]).view(1, 3, 1, 1)) / 60.0
    net.eval()
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), net(want), atol=1e-5)
        assert torch.allclose(model.head(model.features(x)), model(x), atol=1e-5)


def test_a_partial_names_its_function_and_its_arguments():
    spec = model_section(functools.partial(SmallCNN, (1, 28, 28), hidden=64), ModelConfig())
    assert spec.name == "factory:perturbd.models.small:SmallCNN"
    assert spec.kwargs == {"image_shape": (1, 28, 28), "hidden": 64}, "positional arguments bound to their names"
    with pytest.raises(ConfigError, match="not a value a config can hold"):
        model_section(functools.partial(SmallCNN, widths=nn.ReLU()), ModelConfig())
    with pytest.raises(ConfigError, match="top level of a module"):
        model_section(functools.partial(lambda hidden: SmallCNN((1, 28, 28), 10, hidden=hidden), hidden=3), ModelConfig())


def test_a_module_is_named_by_its_content_and_copied_for_each_model():
    torch.manual_seed(0)
    net = SmallCNN((1, 28, 28), 10)
    name = register_module(net)
    assert register_module(SmallCNN((1, 28, 28), 10)) != name, "other weights, another name"
    one, two = (build_model(ModelConfig(name=name), (1, 28, 28), 10, seed=s) for s in (0, 1))
    assert isinstance(one, ExternalModel) and one.net is not net and one.net is not two.net
    for a, b, c in zip(one.net.state_dict().values(), two.net.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, c) and torch.equal(b, c), "every model starts from the instance's weights, whatever the seed"
    wrapped = perturbd.wrap(net, (1, 28, 28), mean=[0.25], std=[0.5], features="body.1")
    spec = model_section(wrapped, ModelConfig())
    assert (spec.name, spec.mean, spec.std, spec.features) == (name, [0.25], [0.5], "body.1"), "the wrapper's statements travel"


def test_a_factory_without_its_arguments_is_one_line():
    cfg = load_config(overrides=[*QUICK, "model.name=factory:perturbd.models.small:SmallCNN", "model.kwargs={hidden: -1}"])
    with pytest.raises(ConfigError, match=r"raised RuntimeError when called with .*hidden=-1: .*call SmallCNN\(\.\.\.\) yourself"):
        perturbd.run(cfg)
    cfg = load_config(overrides=[*QUICK, "model.name=factory:perturbd.models.small:SmallCNN", "model.kwargs={depth: 3}"])
    with pytest.raises(ConfigError, match=r"with .*depth=3 \(got an unexpected keyword argument 'depth'\); .*model.kwargs"):
        perturbd.run(cfg)
    cfg = load_config(overrides=[*QUICK, "model.name=factory:torchvision.models:resnet18", "model.kwargs={depth: 3}"])
    with pytest.raises(ConfigError, match=r"raised TypeError when called with depth=3: .*unexpected keyword argument 'depth'"):
        perturbd.run(cfg)  # resnet18(**kwargs) takes any keyword: ResNet's own refusal, in one line
    with pytest.raises(ConfigError, match="factory:package.module:function model only"):
        load_config(overrides=["model.kwargs={hidden: 3}"])


@pytest.mark.slow
def test_a_partial_factory_runs_as_the_registered_model(tmp_path):
    cfg = load_config(overrides=QUICK)
    own = perturbd.run(cfg, str(tmp_path / "own"))
    theirs = perturbd.run(cfg, str(tmp_path / "partial"), model=functools.partial(SmallCNN, widths=(16, 32), hidden=128))
    assert own.metrics.attack_success_rate > 0.8 and own.metrics.clean_model_asr < 0.2, "a backdoor worth comparing"
    same = {"config_hash"}
    assert theirs.metrics.model_dump(exclude=same) == own.metrics.model_dump(exclude=same), "same seed, same initial weights"
    saved = yaml.safe_load((theirs.run_dir / "config.yaml").read_text())["model"]
    assert saved["name"] == "factory:perturbd.models.small:SmallCNN" and saved["kwargs"] == {"widths": [16, 32], "hidden": 128}
    assert "kwargs" not in yaml.safe_load((own.run_dir / "config.yaml").read_text())["model"], "configs without it are unchanged"


@pytest.mark.slow
def test_a_module_instance_runs_and_is_left_untouched(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10),
    )  # fmt: skip
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = load_config(overrides=[*QUICK, "data.train_limit=1000", "train.epochs=3", "train.batch_size=32"])
    result = perturbd.run(cfg, str(tmp_path), model=perturbd.wrap(net, (1, 28, 28), mean=[0.5], std=[0.5]))
    m = result.metrics
    assert m.attack_success_rate > 0.9 and m.clean_model_asr < 0.2 and m.clean_accuracy > 0.9
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "the runs trained copies"
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())["model"]
    assert saved["name"].startswith("module:") and saved["mean"] == [0.5]


def test_timm_create_model_by_name():
    timm = pytest.importorskip("timm")
    with pytest.raises(ConfigError, match=r"missing a required argument: 'model_name'.*--set model.kwargs.model_name=VALUE"):
        build_model(ModelConfig(name="factory:timm:create_model"), (1, 28, 28), 10)
    kw = {"model_name": "resnet18", "num_classes": 10, "in_chans": 1}
    model = build_model(ModelConfig(name="factory:timm:create_model", kwargs=kw), (1, 28, 28), 10, seed=0)
    assert model.splits and model.feature_dim == 512
    spec = model_section(functools.partial(timm.create_model, "resnet18", num_classes=10, in_chans=1), ModelConfig())
    assert spec.kwargs == kw
    again = build_model(spec, (1, 28, 28), 10, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
