"""ABL, the training-time defence: its three mechanics against hand computations (the LGA sign
flip, the isolation of the lowest losses, the ascent step), the epochs it scales from the recipe,
what it isolates on MNIST digits, determinism, its one-line refusals, and a run config with
``defenses: [abl]`` end to end (and ``perturbd defend`` on that run).

What a tiny CNN shows (measured, CPU, seed 0): on 2,000 MNIST digits with a 3×3 white patch on
5 % of them, six epochs of LGA isolate 20 images that are all poisoned, where plain training
isolates far fewer; but the unlearning at the authors' lr (5e-4, four steps of 20 images) does
not move a net this small, whose loss on the isolated images is ~1e-4 (a saturated cross-entropy
has no gradient to climb): the ASR stays above 90 %. Larger lrs do nothing until the ascent
explodes (lr 1: ASR 22 %, accuracy 96 → 78 %; lr 2: accuracy 10 %). So the removal is tested on
its mechanics, the isolation on data."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from planted import TRAIN, tiny_model
from torch import nn
from typer.testing import CliRunner

import perturbd
from perturbd.cli import app, main
from perturbd.config import DataConfig, PoisonConfig, TrainConfig, TriggerConfig, load_config
from perturbd.data import load_data
from perturbd.data.dataset import ImageDataset
from perturbd.defenses import build_defense
from perturbd.defenses.abl import AntiBackdoorLearning, ascent_loss, lga_loss, lowest_losses, phase_epochs, unlearning_recipe
from perturbd.errors import ConfigError
from perturbd.evaluation import DefenseInputs, evaluate_defense
from perturbd.metrics import attack_success_rate, clean_accuracy
from perturbd.models import get_model, list_models
from perturbd.poisoning import poison_dataset
from perturbd.runs.experiment import check_config, run
from perturbd.train import fit
from perturbd.triggers import TriggerContext, build_trigger

CHEAP = {"isolation_epochs": 1, "finetuning_epochs": 1, "unlearning_epochs": 1, "seed": 0}
PLAIN_SGD = TrainConfig(epochs=1, batch_size=4, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant", device="cpu", precision="fp32")


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("gamma,sign", [(0.1, 1.0), (50.0, -1.0)])
def test_lga_descends_above_gamma_and_ascends_below(gamma: float, sign: float) -> None:
    net, (x, y) = _linear(), _batch()
    ce = F.cross_entropy(net(x), y)
    assert 0.1 < float(ce.detach()) < 50, "the batch's loss lies between the two gammas"
    lga = lga_loss(gamma)(net, x, y)
    assert torch.isclose(lga, sign * ce), "the value: sign(ℓ − γ) · ℓ"
    mine = torch.autograd.grad(lga, list(net.parameters()))
    theirs = torch.autograd.grad(ce, list(net.parameters()))
    assert all(torch.allclose(a, sign * b) for a, b in zip(mine, theirs, strict=True))


class Table(nn.Module):
    """Logits looked up by the image's first pixel (its index): a model whose losses are set by hand."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[(x[:, 0, 0, 0] * 255).round().long()]


def test_isolates_the_lowest_losses_lowest_first_ties_in_the_datas_order() -> None:
    logits = torch.tensor([[0.0, 3.0], [2.0, 0.0], [0.0, 0.0], [5.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([1, 0, 0, 0, 0, 1])
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    data = ImageDataset(images, labels, ("a", "b"))
    by_hand = [-torch.log_softmax(logits[i], 0)[labels[i]] for i in range(6)]  # 0.049, 0.127, 0.693, 0.0067, 0.127, 0.313
    isolated, losses = lowest_losses(Table(logits), data, 4)
    assert torch.allclose(losses, torch.stack(by_hand))
    assert isolated.tolist() == [3, 0, 1, 4], "image 1 and image 4 tie: the earlier first"


def test_the_unlearning_step_climbs_the_gradient() -> None:
    net, (x, y) = _linear(), _batch()
    data = ImageDataset((x * 255).round().to(torch.uint8), y, ("a", "b", "c"))
    start = [p.detach().clone() for p in net.parameters()]
    xs = data.images.float() / 255
    grads = torch.autograd.grad(F.cross_entropy(net(xs), y), list(net.parameters()))
    recipe = unlearning_recipe(PLAIN_SGD.model_copy(update={"augment": "crop_flip", "warmup": 0.5, "label_smoothing": 0.1}), 4)
    assert (recipe.schedule, recipe.warmup, recipe.augment, recipe.label_smoothing, recipe.batch_size) == ("constant", 0.0, "none", 0.0, 4)
    fit(net, data, recipe, 0, epochs=1, lr=0.01, loss_fn=ascent_loss)
    for p, w, g in zip(net.parameters(), start, grads, strict=True):
        assert torch.allclose(p, w + 0.01 * g, atol=1e-7), "one SGD step up the gradient: w + lr · ∇ℓ"


def test_the_phases_scale_with_the_recipe() -> None:
    assert (phase_epochs(None, 0.2, 100), phase_epochs(None, 0.6, 100)) == (20, 60), "the paper's 20 and 60 of 100 epochs"
    assert (phase_epochs(None, 0.2, 20), phase_epochs(None, 0.6, 20)) == (4, 12)
    assert phase_epochs(None, 0.2, 2) == 1 and phase_epochs(7, 0.2, 100) == 7


def test_on_mnist_digits_lga_isolates_the_poisoned_images() -> None:
    torch.set_num_threads(1)
    split = load_data(DataConfig(name="mnist5k", train_limit=2000), 0)
    trig = build_trigger(TriggerConfig(kind="patch", amplitude=255), TriggerContext(split.train.image_shape, 0, 0))
    p = poison_dataset(split.train, trig, PoisonConfig(rate=0.05, target=0), 0)
    abl = build_defense("abl", isolation_epochs=6, finetuning_epochs=2, seed=0)
    abl.fit(lambda: tiny_model(p.dataset.image_shape), p.dataset, TRAIN)
    precision = float(torch.isin(abl.isolated_, p.indices).float().mean())
    assert len(abl.isolated_) == 20 and precision >= 0.9, precision  # measured: 1.0
    plain = tiny_model(p.dataset.image_shape)
    fit(plain, p.dataset, TRAIN, 0, epochs=6)
    plain_isolated, _ = lowest_losses(plain, p.dataset, 20)
    assert float(torch.isin(plain_isolated, p.indices).float().mean()) < precision, "plain training's lowest losses: fewer poisoned"
    # the tiny net keeps its backdoor through the authors' unlearning (see the module docstring)
    assert attack_success_rate(abl.model_, split.test, trig, 0) > 0.5 and clean_accuracy(abl.model_, split.test) > 0.9


def test_measured_on_the_planted_backdoor_as_a_mitigation_with_its_isolation(planted) -> None:
    r = evaluate_defense(build_defense("abl", **CHEAP), planted.inputs())
    m = r.metrics
    assert r.kind == "training" and r.clean_used == 0 and m["clean_images_used"] == 0
    assert m["asr_before"] == attack_success_rate(planted.model, planted.test, planted.trigger, 0), "against the model trained plainly"
    assert m["isolated"] == 20 and m["isolation_precision"] == m["poisoned_isolated"] / 20
    assert 0 <= m["isolation_precision"] <= 1 and 0 <= m["der"] <= 1 and m["seconds"] > 0
    assert (m["isolation_epochs"], m["finetuning_epochs"], m["unlearning_epochs"]) == (1, 1, 1)
    assert f"isolation precision {100 * m['isolation_precision']:.1f} %" in r.cell["text"] and "20 isolated" in r.cell["text"]


def test_same_seed_same_model_and_isolation(planted) -> None:
    part = planted.train.subset(torch.arange(600))

    def trained(seed: int) -> AntiBackdoorLearning:
        return build_defense("abl", **{**CHEAP, "seed": seed}).fit(lambda: tiny_model(part.image_shape), part, TRAIN)

    a, b, c = trained(0), trained(0), trained(1)
    assert torch.equal(a.isolated_, b.isolated_)
    assert all(torch.equal(x, y) for x, y in zip(a.model_.state_dict().values(), b.model_.state_dict().values(), strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(a.model_.state_dict().values(), c.model_.state_dict().values(), strict=True))


def test_the_initial_model_given_is_copied_not_trained(planted) -> None:
    start = tiny_model(planted.train.image_shape)
    kept = {k: v.clone() for k, v in start.state_dict().items()}
    abl = build_defense("abl", **CHEAP).fit(start, planted.train.subset(torch.arange(300)), TRAIN)
    assert abl.model_ is not start and all(torch.equal(kept[k], v) for k, v in start.state_dict().items())


def test_one_line_refusals(planted) -> None:
    few = planted.train.subset(torch.arange(50))
    with pytest.raises(ConfigError, match=r"abl.isolation_ratio 0.01 of 50 training images isolates none; raise it to at least 0.02"):
        build_defense("abl").fit(lambda: tiny_model(few.image_shape), few, TRAIN)
    with pytest.raises(ConfigError, match=r"abl.isolation_ratio must be in \(0, 0.5\], got 0.6"):
        build_defense("abl", isolation_ratio=0.6)
    alone = DefenseInputs(planted.model, planted.test, planted.clean, trigger=planted.trigger, target=0)
    with pytest.raises(ConfigError, match="a trained model alone does not give") as err:
        evaluate_defense(build_defense("abl", **CHEAP), alone)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="cannot repair a trained model alone: give defend") as err:
        perturbd.defend(planted.model, (planted.train.images, planted.train.labels), "abl")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="defense 'fine_tuning' takes no train= recipe"):
        perturbd.defend(planted.model, (planted.clean.images, planted.clean.labels), "fine_tuning", train=TRAIN)


@pytest.mark.parametrize("arch", [*list_models(), "tv:resnet18"])
def test_trains_every_architecture(arch: str) -> None:
    shape = (1, 28, 28) if arch in ("cnn28", "lenet5", "lenet5_valid") else (3, 16, 16)
    g = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.randint(0, 256, (64, *shape), generator=g, dtype=torch.uint8), torch.arange(64) % 10, tuple("0123456789"))
    recipe = TrainConfig(epochs=1, batch_size=16, device="cpu", precision="fp32")
    d = build_defense("abl", isolation_ratio=0.1, unlearning_batch_size=4, **CHEAP)
    d.fit(lambda: get_model(arch, shape, 10, seed=0), data, recipe)
    assert len(d.isolated_) == 6 and len(set(d.isolated_.tolist())) == 6
    with torch.no_grad():
        assert bool(torch.isfinite(d.model_(torch.rand(2, *shape))).all())


ABL_RUN = "defenses=[{name: abl, params: {isolation_epochs: 1, finetuning_epochs: 1, unlearning_epochs: 1}}]"


def test_a_run_config_trains_a_victim_under_abl_and_measures_it(tiny_run, tmp_path: Path) -> None:
    result = run(load_config(overrides=[*tiny_run, ABL_RUN]), tmp_path)
    (entry,) = json.loads((result.run_dir / "defenses.json").read_text())["defenses"]
    m = entry["metrics"]
    assert entry["kind"] == "training" and entry["params"]["isolation_epochs"] == 1 and isinstance(entry["params"]["seed"], int)
    assert m["asr_before"] == pytest.approx(result.metrics.attack_success_rate), "against the run's backdoored model"
    assert m["clean_accuracy_before"] == pytest.approx(result.metrics.clean_accuracy)
    assert m["isolated"] == int(0.01 * result.metrics.poison_set_size) and 0 <= m["isolation_precision"] <= 1
    assert m["clean_images_used"] == 0
    assert result.metrics.defenses["abl"]["der"] == m["der"]
    header = (result.run_dir / "matrix.csv").read_text().splitlines()[0]
    assert "abl_der" in header and "abl_robust_accuracy" in header


def test_a_run_of_the_update_setting_is_refused_in_one_line(tiny_run) -> None:
    cfg = load_config(overrides=[*tiny_run, "attack.setting=update", ABL_RUN])
    with pytest.raises(ConfigError, match="trains the victim from scratch on the poisoned set: it needs attack.setting=before_training"):
        check_config(cfg)


def test_perturbd_defend_trains_it_on_a_run_and_refuses_a_bare_model_file(run_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    run_copy = Path(shutil.copytree(run_dir, tmp_path / run_dir.name))
    res = CliRunner().invoke(app, ["defend", str(run_copy), "-d", "abl", *[a for k, v in CHEAP.items() for a in ("-p", f"{k}={v}")]])
    assert res.exit_code == 0, res.output
    entry = json.loads((run_copy / "defenses.json").read_text())["defenses"][-1]
    assert entry["name"] == "abl" and entry["kind"] == "training" and entry["metrics"]["isolated"] >= 1
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_dir / "model.safetensors", bare / "model.safetensors")
    args = ["defend", str(bare / "model.safetensors"), "--data", "synthetic", "-d", "abl", "-o", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", ["perturbd", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "a trained model alone does not give" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists(), "nothing written"
