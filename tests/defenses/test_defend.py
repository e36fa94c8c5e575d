"""perturbd.defend and a defence's fit on a plain nn.Module built here: wrapped once (perturbd.wrap,
or by defend itself), it goes through every registered defence and gives the numbers the same
network gives as a perturbd model; arrays in any layout and range work as the ImageDataset does."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from planted import TRAIN
from torch import nn

import perturbd
from perturbd.defenses import build_defense, get_defense, list_defenses
from perturbd.errors import ConfigError, DataError
from perturbd.evaluation.kinds import kind_of, missing_results

CHEAP = {
    "n_clean": 64, "epochs": 1, "steps": 3, "overlays": 2, "batch_size": 16, "components": 3,
    "nc_epochs": 1, "nc_batch": 8, "uap_steps": 3, "uap_batch": 8, "n_overlay": 32, "n_calibration": 32, "seed": 3,
    "isolation_epochs": 1, "finetuning_epochs": 1, "unlearning_epochs": 1,
}  # fmt: skip


def _cheap(name: str) -> dict:
    fields = get_defense(name).Params.model_fields
    return {k: v for k, v in CHEAP.items() if k in fields}


def plain(model: nn.Module) -> nn.Sequential:
    """The planted TinyNet's layers as a plain nn.Sequential (no features()/head(), no normalisation)."""
    return nn.Sequential(copy.deepcopy(model.body), copy.deepcopy(model.fc)).eval()


def _data(planted, kind: str):
    return planted.train if kind in ("dataset", "training") else planted.clean


@pytest.mark.parametrize("name", list_defenses())
def test_a_plain_module_gives_every_defence_the_numbers_of_the_perturbd_model(name, planted):
    net = plain(planted.model)
    wrapped = perturbd.wrap(net, planted.train.image_shape, mean=[0.5], std=[0.5])  # TinyNet's own normalisation
    d = build_defense(name, **_cheap(name))
    theirs = build_defense(name, **_cheap(name))
    extra: dict = {}
    own_extra: dict = {}
    recipe = [TRAIN] if d.kind == "training" else []  # the model given is then the start, trained again on the poisoned set
    if d.kind == "update":
        extra = {"before": perturbd.wrap(plain(planted.clean_model), planted.train.image_shape, mean=[0.5], std=[0.5])}
        own_extra = {"before": planted.clean_model}
    elif recipe:
        extra = {"train": TRAIN}
    assert perturbd.defend(wrapped, _data(planted, d.kind), d, **extra) is d
    theirs.fit(planted.model, _data(planted, d.kind), *recipe, **own_extra)
    assert missing_results(d) == [] and isinstance(d, kind_of(d).protocol)
    if d.kind in ("mitigation", "training"):
        x = torch.rand(8, *planted.test.image_shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.allclose(d.model_.eval()(x), theirs.model_.eval()(x), atol=1e-4)
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), plain(planted.model).state_dict().values()))
    else:
        assert torch.allclose(d.scores_.float(), theirs.scores_.float(), atol=1e-4, rtol=1e-4)
        assert torch.equal(d.flagged_, theirs.flagged_)


def test_a_torchvision_resnet_built_here_through_two_defences(planted):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(1, 64, 3, padding=1, bias=False)  # the synthetic bars are grey 28×28
    x = planted.clean.images[:64].numpy().transpose(0, 2, 3, 1)  # channels-last numpy, as another framework holds them
    strip = perturbd.defend(net, x, "strip", overlays=4, n_overlay=32, n_calibration=32, seed=0)
    assert strip.clean_used_ == 64 and strip.scores_.shape == (32,) and torch.isfinite(strip.scores_).all()
    assert strip.flag(torch.from_numpy(x[:5]).permute(0, 3, 1, 2).contiguous()).shape == (5,)
    train = planted.train
    ss = perturbd.defend(net, (train.images.float() / 255, train.labels), "spectral_signature")  # float [0, 1] tensors
    assert ss.scores_.shape == (len(train),) and ss.flagged_.any()
    net.train()
    at_layer4 = perturbd.wrap(net, train.image_shape, features="layer4")
    assert net.training, "wrap reads the logits' width in eval mode and restores the mode"
    assert at_layer4.feature_dim == 512 * 2 * 2, "layer4's map, flattened (28 → 14 → 7 → 4 → 2)"
    ac = perturbd.defend(at_layer4, (train.images[:200], train.labels[:200]), "activation_clustering")
    assert ac.scores_.shape == (200,)


def test_defend_finds_the_planted_backdoor_through_a_plain_module(planted):
    """The fitted results mean what they do for a perturbd model: STRIP scores triggered inputs
    above clean ones, the spectral signature ranks the poison first."""
    from sklearn.metrics import roc_auc_score

    model = perturbd.wrap(plain(planted.model), planted.train.image_shape, mean=[0.5], std=[0.5])
    strip = perturbd.defend(model, planted.clean.images, "strip", overlays=8, n_overlay=100, n_calibration=100, seed=0)
    test = planted.test.images[planted.test.labels != planted.target][:200]
    scores = torch.cat([strip.score(test), strip.score(planted.trigger.apply(test))])
    truth = [0] * len(test) + [1] * len(test)
    assert roc_auc_score(truth, scores.numpy()) > 0.9
    ss = perturbd.defend(model, (planted.train.images, planted.train.labels), "spectral_signature")
    poisoned = torch.zeros(len(planted.train), dtype=torch.bool)
    poisoned[planted.indices] = True
    assert roc_auc_score(poisoned.numpy(), ss.scores_.numpy()) > 0.75


def test_a_fit_on_an_unwrapped_module_names_the_fix(planted):
    with pytest.raises(ConfigError, match=r"perturbd.wrap\(net, image_shape"):
        build_defense("spectral_signature").fit(plain(planted.model), planted.train)


def test_defend_mistakes_are_one_line(planted):
    net = plain(planted.model)
    x = planted.clean.images[:16]
    for call, error, message in (
        (lambda: perturbd.defend(net, x, "strp"), ConfigError, "did you mean 'strip'"),
        (lambda: perturbd.defend(net, x, "strip", overlay=3), ConfigError, "unknown parameter 'overlay'"),
        (lambda: perturbd.defend(net, x, "spectral_signature"), DataError, r"needs labels: give data as \(images, labels\)"),
        (lambda: perturbd.defend(net, (x, torch.zeros(3, dtype=torch.long)), "strip"), DataError, "3 labels for 16 images"),
        (lambda: perturbd.defend(net, x.float(), "strip"), DataError, r"values in \[0, \d+\], expected \[0, 1\]"),
        (lambda: perturbd.defend(net, (x, torch.full((16,), 12)), "neural_cleanse"), DataError, "labels go up to 12"),
        (lambda: perturbd.defend("model.pt", x, "strip"), ConfigError, "must be a torch.nn.Module"),
        (lambda: perturbd.defend(net, x, "update_audit"), ConfigError, "give the model before it"),
        (lambda: perturbd.defend(net, x, build_defense("strip"), seed=1), ConfigError, "give the parameters when building"),
        (lambda: perturbd.wrap(net, (3, 16, 16)), ConfigError, "cannot take images of shape 3x16x16"),
        (lambda: perturbd.wrap(net, (1, 16, 16), mean=[0.1, 0.2]), ConfigError, "mean has 2 values for images of 1 channel"),
        (lambda: perturbd.wrap(net, (1, 16, 16), features="layer9"), ConfigError, "layer9"),
        (lambda: perturbd.wrap(net, 16), ConfigError, r"image_shape must be \(C, H, W\)"),
    ):
        with pytest.raises(error, match=message):
            call()


def test_as_dataset_reads_every_layout_as_the_npz_source_does():
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    for images in (nchw, nchw.transpose(0, 2, 3, 1), torch.from_numpy(nchw), nchw / 255.0):
        d = perturbd.as_dataset(images, np.arange(6) % 3, num_classes=10)
        assert d.images.dtype == torch.uint8 and torch.equal(d.images, torch.from_numpy(nchw)) and d.num_classes == 10
    assert perturbd.as_dataset(nchw[:, 0]).image_shape == (1, 8, 8)
