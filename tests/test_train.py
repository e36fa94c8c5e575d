"""Training: learns, is reproducible from the seed, rejects bad devices."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

from perturbd.config import TrainConfig
from perturbd.data.dataset import ImageDataset
from perturbd.errors import ConfigError
from perturbd.train import Lookahead, fit, logits, lr_factor, param_groups, predict, resolve_device, resolve_precision


def _blobs(n: int = 400) -> ImageDataset:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 60, (n, 1, 6, 6), generator=gen, dtype=torch.uint8)
    images[labels == 1, :, :3] += 150  # class 1: bright top half
    return ImageDataset(images, labels, ("dark", "bright"), "blobs")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 2))


def test_fit_learns_and_is_reproducible() -> None:
    data = _blobs()
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.1, device="cpu")
    a, b = _net(), _net()
    ra = fit(a, data, cfg, seed=7)
    rb = fit(b, data, cfg, seed=7)
    assert ra.losses == rb.losses
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert float((predict(a, data.images) == data.labels).float().mean()) > 0.95
    assert ra.losses[-1] < ra.losses[0]


def test_other_seed_other_weights() -> None:
    data = _blobs()
    cfg = TrainConfig(epochs=1, batch_size=32, device="cpu")
    a, b = _net(), _net()
    fit(a, data, cfg, seed=1)
    fit(b, data, cfg, seed=2)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_schedules() -> None:
    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 10, 10) == pytest.approx(0.0)
    assert lr_factor("step", 9, 10) == pytest.approx(0.01) and lr_factor("constant", 5, 10) == 1.0


def test_divergence_is_reported() -> None:
    net = _net()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(float("nan"))
    with pytest.raises(ConfigError, match="lower train.lr"):
        fit(net, _blobs(), TrainConfig(epochs=1, batch_size=100, device="cpu"), seed=0)


def test_unavailable_cuda_is_a_config_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="train.device"):
        resolve_device("tpu!")


# --- recipe options and the device paths ---------------------------------------------------------


def test_new_options_default_to_the_old_cpu_path() -> None:
    cfg = TrainConfig(device="cpu")
    assert (cfg.precision, cfg.compile, cfg.label_smoothing, cfg.warmup) == ("auto", False, 0.0, 0.0)
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16


def test_warmup_then_linear_decay() -> None:
    factors = [lr_factor("linear", s, 10, warmup=0.2) for s in range(10)]
    assert factors[:2] == [0.5, 1.0] and factors[2] == 1.0 and factors[-1] == pytest.approx(1 / 8)
    assert all(a >= b for a, b in itertools.pairwise(factors[1:]))
    assert [lr_factor("cosine", s, 10) for s in range(10)] == [lr_factor("cosine", s, 10, 0.0) for s in range(10)]


def test_bf16_autocast_path_learns_on_cpu() -> None:
    """The autocast path (the GPU default) runs on the CPU too: same loop, bf16 matmuls."""
    data = _blobs()
    net = _net()
    result = fit(net, data, TrainConfig(epochs=3, batch_size=32, lr=0.1, device="cpu", precision="bf16"), seed=7)
    assert result.losses[-1] < result.losses[0]
    assert float((predict(net, data.images, precision="bf16") == data.labels).float().mean()) > 0.95
    assert logits(net, data.images, precision="bf16").dtype == torch.float32


def test_label_smoothing_raises_the_floor_of_the_loss() -> None:
    data = _blobs()
    plain = fit(_net(), data, TrainConfig(epochs=3, batch_size=32, lr=0.1, device="cpu"), seed=7)
    smooth = fit(_net(), data, TrainConfig(epochs=3, batch_size=32, lr=0.1, device="cpu", label_smoothing=0.2), seed=7)
    assert smooth.losses[-1] > plain.losses[-1]


def test_deterministic_training_switches_pytorch_to_deterministic_kernels_and_back() -> None:
    from perturbd.train import kernel_choice

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    with kernel_choice(torch.device("cpu"), deterministic=True):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic) == before
    a, b = _net(), _net()
    fit(a, _blobs(), TrainConfig(epochs=1, batch_size=50, device="cpu", deterministic=True), seed=0)
    fit(b, _blobs(), TrainConfig(epochs=1, batch_size=50, device="cpu"), seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())), "the same numbers on the CPU"


def test_triangle_schedule_runs_from_a_fifth_to_the_peak_and_down_to_seven_hundredths() -> None:
    factors = [lr_factor("triangle", s, 100, 0.23) for s in range(100)]
    assert factors[0] == pytest.approx(0.2) and max(factors) == pytest.approx(1.0) and factors.index(max(factors)) == 23
    assert factors[-1] == pytest.approx(1 - 0.93 * 76 / 77) and all(a > b for a, b in itertools.pairwise(factors[23:]))


def test_norm_biases_take_a_scaled_lr_with_the_same_decay_per_step() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2))
    net[1].weight.requires_grad_(False)
    cfg = TrainConfig(bias_lr_scale=64, weight_decay=1e-3)
    fast, rest = param_groups(net, cfg, 0.5)
    assert [id(p) for p in fast["params"]] == [id(net[1].bias)]
    assert fast["lr"] == 32 and fast["lr"] * fast["weight_decay"] == pytest.approx(rest["lr"] * rest["weight_decay"])
    assert all(p.requires_grad for p in rest["params"]) and len(rest["params"]) == 4  # conv w, b; linear w, b
    assert len(param_groups(net, TrainConfig(), 0.5)) == 1


def test_lookahead_pulls_weights_to_their_average_late_in_training() -> None:
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    la = Lookahead(net, total_steps=10)
    with torch.no_grad():
        net.weight.fill_(1.0)
    la.step(4)  # not a multiple of 5: nothing
    assert float(net.weight.detach()) == 1.0
    la.step(5)  # decay 0.95**5 * 0.5**3
    d = 0.95**5 * 0.125
    assert float(net.weight.detach()) == pytest.approx(1 - d) and float(la.average[0]) == pytest.approx(1 - d)
    with torch.no_grad():
        net.weight.fill_(3.0)
    la.finish()  # the weights become the average, which does not move
    assert float(net.weight.detach()) == pytest.approx(1 - d)


def test_alternating_flip_mirrors_each_image_in_exactly_one_of_two_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    import perturbd.train as train

    n = 40
    data = ImageDataset(torch.zeros(n, 1, 6, 6, dtype=torch.uint8), torch.arange(n), tuple(str(i) for i in range(n)), "ids")
    cfg = TrainConfig(augment="shift_flip", epochs=4, batch_size=10, device="cpu", momentum=0)
    flips_seen: list[torch.Tensor | None] = []
    ids: list[torch.Tensor] = []

    original = train.augment

    def recording_augment(x: torch.Tensor, kind: str, gen: torch.Generator, flips: torch.Tensor | None = None) -> torch.Tensor:
        flips_seen.append(flips)
        return original(x, kind, gen, flips=flips)

    monkeypatch.setattr(train, "augment", recording_augment)

    def record_ids(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ids.append(y.clone())
        return net(x).sum() * 0

    net = nn.Sequential(nn.Flatten(), nn.Linear(36, n))
    fit(net, data, cfg, seed=0, loss_fn=record_ids)
    per_epoch = n // cfg.batch_size
    state = torch.zeros(cfg.epochs, n, dtype=torch.bool)
    for call, (f, y) in enumerate(zip(flips_seen, ids, strict=True)):
        assert f is not None
        state[call // per_epoch, y] = f
    assert torch.equal(state[0], ~state[1]) and torch.equal(state[0], state[2]) and torch.equal(state[1], state[3])
    assert 0 < int(state[0].sum()) < n  # a random half, not all or none
