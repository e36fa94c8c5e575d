"""Training, fine-tuning and prediction over in-memory uint8 tensors.

The whole data set is moved to the device once as uint8; each step slices a batch, converts it
to float at the model's door (:func:`~perturbd.data.dataset.to_float01`) and augments it on the
device. There is no DataLoader and no per-image Python. Shuffling and augmentation draw from one
``torch.Generator`` seeded from the run seed, so the same seed gives the same numbers on CPU.

On CUDA the same loop also: keeps that generator on the GPU (no host round trip per step), stores
weights and batches channels-last, runs forward and backward under bf16 autocast
(``train.precision``; weights, optimiser state and the loss stay fp32) and lets cuDNN pick its
fastest kernels for the fixed batch shape. ``train.compile`` wraps the model in ``torch.compile``
(any device). The loss is summed on the device and read once per epoch. On the CPU the default
path is fp32 with no autocast, exactly the numbers of earlier versions.

bf16 has 8 significant bits: normalised inputs in [-1, 1] are held to within a quarter of a grey
level, so a trigger of a few grey levels survives the cast.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from perturbd.config import TrainConfig
from perturbd.data.augment import alternating_flips, augment, resolve_augment
from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.errors import ConfigError
from perturbd.progress import Monitor, SilentMonitor, current

__all__ = [  # Monitor and SilentMonitor live in perturbd.progress and are re-exported here, where they were
    "INIT_IMAGES", "FitResult", "Lookahead", "LossFn", "Monitor", "SilentMonitor", "as_device_input", "autocast", "fit",
    "kernel_choice", "logits", "lr_factor", "make_optimizer", "param_groups", "predict", "resolve_device", "resolve_precision",
    "triangle_factor",
]  # fmt: skip

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

#: Images (the first of the training set) a model's ``init_from_data`` sees before training.
INIT_IMAGES = 5000


@dataclass
class FitResult:
    """Per-epoch mean training loss and throughput (images per second)."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; a :class:`ConfigError` for an unavailable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is '{name}' but no CUDA GPU is visible; use train.device=cpu or auto")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` on ``device``; ``None`` means plain fp32.
    ``auto`` → bf16 on a CUDA GPU that supports it, fp32 anywhere else. ``bf16`` is honoured on
    the CPU too (slow without AMX/AVX512-BF16; it lets CPU tests run the autocast path)."""
    if precision == "fp32":
        return None
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return torch.bfloat16 if cuda_bf16 else None
    if precision == "bf16":
        if device.type == "cuda" and not cuda_bf16:
            raise ConfigError(f"train.precision is bf16 but {torch.cuda.get_device_name(device)} has no bf16; use train.precision=fp32")
        return torch.bfloat16
    raise ConfigError(f"train.precision must be auto, fp32 or bf16, got '{precision}'")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[None]:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing at all when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def as_device_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` in the memory layout the device prefers: channels-last on CUDA, unchanged elsewhere."""
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" and x.ndim == 4 else x


@contextlib.contextmanager
def kernel_choice(device: torch.device, deterministic: bool) -> Iterator[None]:
    """How kernels are chosen while training; restored on exit.

    ``deterministic`` (``train.deterministic``): PyTorch's deterministic algorithms, cuDNN's
    deterministic convolutions and no autotuning, and cuBLAS's fixed workspace (set unless the
    user set ``CUBLAS_WORKSPACE_CONFIG``): two runs on one GPU give the same numbers, at some cost
    in speed. Otherwise, on CUDA, cuDNN benchmarks kernels for the fixed training shapes.
    """
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1], before[2]


def param_groups(model: nn.Module, cfg: TrainConfig, lr: float) -> list[dict[str, object]]:
    """The optimiser's parameter groups, each with its ``lr_scale`` (its lr is ``lr × lr_scale ×``
    the schedule's factor).

    With ``train.bias_lr_scale`` s ≠ 1 the biases of the normalisation layers form a group of their
    own at lr × s and weight decay ÷ s, so their decay per step (lr × weight decay) is everyone
    else's: a BatchNorm bias moves a whole channel's threshold and, with the weights' scale held
    by the BatchNorm after them, takes a far larger step than a conv weight (Jordan's airbench
    trains them at 64×). Frozen parameters (``requires_grad`` off) are left out.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.bias_lr_scale == 1.0:
        return [{"params": params, "lr": lr, "weight_decay": cfg.weight_decay, "lr_scale": 1.0}]
    norm_biases = {
        id(m.bias)
        for m in model.modules()
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) and m.bias is not None and m.bias.requires_grad
    }
    scale, decay = cfg.bias_lr_scale, cfg.weight_decay
    return [
        {"params": [p for p in params if id(p) in norm_biases], "lr": lr * scale, "weight_decay": decay / scale, "lr_scale": scale},
        {"params": [p for p in params if id(p) not in norm_biases], "lr": lr, "weight_decay": decay, "lr_scale": 1.0},
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg, lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


class Lookahead:
    """airbench's Lookahead (after Zhang et al., 2019): every :attr:`EVERY` steps the weights and
    the normalisation statistics move to a running average of themselves, ``avg ← avg + (1 −
    d)(w − avg); w ← avg``, with ``d = 0.95⁵ · (step / steps)³`` — no averaging early on (``d``
    ≈ 0), the average's memory growing towards the end of training. :meth:`finish` sets the
    weights to the average. Averaging late weights cancels some of the noise of a short run's
    large steps; it costs one pass over the weights every five steps."""

    EVERY = 5

    def __init__(self, model: nn.Module, total_steps: int) -> None:
        self.total = total_steps
        self.tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.average = [t.detach().clone() for t in self.tensors]

    @torch.no_grad()
    def step(self, step: int) -> None:
        """After optimiser step number ``step`` (1-based)."""
        if step % self.EVERY == 0:
            self._pull(0.95**self.EVERY * (step / self.total) ** 3)

    @torch.no_grad()
    def finish(self) -> None:
        self._pull(1.0)

    def _pull(self, decay: float) -> None:
        for avg, t in zip(self.average, self.tensors, strict=True):
            avg.lerp_(t, 1.0 - decay)
            t.copy_(avg)


def lr_factor(schedule: str, step: int, total: int, warmup: float = 0.0) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total`` (per optimiser step).

    The first ``warmup`` fraction of the steps rises linearly to 1 (step 0 gets ``1 / w``, not 0,
    so no step is wasted); ``schedule`` then runs over the remaining steps.

    A closed form, not ``torch.optim.lr_scheduler`` (LinearLR, CosineAnnealingLR, MultiStepLR
    in a SequentialLR): their factors are updated step by step and differ from it in the last
    bits (up to 1.8e-14 relative over 400 steps), which would change every trained model.
    """
    if schedule == "triangle":
        return triangle_factor(step, total, warmup)
    warm = int(warmup * total)
    if step < warm:
        return (step + 1) / warm
    step, total = step - warm, total - warm
    if schedule == "linear":
        return 1.0 - step / total
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total))
    if schedule == "step":
        return 0.1 ** (step * 3 // total)  # ÷10 at 1/3 and 2/3 of training
    return 1.0


def triangle_factor(step: int, total: int, warmup: float) -> float:
    """airbench's triangle: 0.2 at step 0, rising linearly to 1 at ``int(warmup × total)``, then
    falling linearly to 0.07 at ``total`` (the steps run 0 … total − 1)."""
    peak = int(warmup * total)
    if step < peak:
        return 0.2 + 0.8 * step / peak
    return 1.0 - 0.93 * (step - peak) / max(1, total - peak)


def fit(
    model: nn.Module,
    data: ImageDataset,
    cfg: TrainConfig,
    seed: int,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    loss_fn: LossFn | None = None,
    monitor: Monitor | None = None,
    description: str = "train",
    lr_name: str = "train.lr",
) -> FitResult:
    """Train ``model`` in place on ``data`` (``epochs``/``lr`` override the config, for fine-tuning).

    The one training loop of perturbd: the victims, the adversary's models and the mitigations
    (which pass their own ``loss_fn``) all train here.

    Args:
        model: takes float ``(N, C, H, W)`` in [0, 1]; moved to the configured device (and to
            channels-last on CUDA).
        data: uint8 (or float [0, 1]) images and labels.
        cfg: optimiser, schedule (``warmup``, ``schedule``), ``label_smoothing``, ``augment``,
            ``device``, ``precision`` and ``compile``. Not ``threads``: ``fit`` trains with the
            threads the process has (an entry point sets them: :mod:`perturbd.process`).
        seed: seeds shuffling and augmentation (same seed, same numbers on the CPU; on CUDA the
            draws come from a CUDA generator, so they differ from the CPU's).
        loss_fn: ``loss_fn(net, x, y) -> loss`` for a batch (float ``x`` in [0, 1], augmented);
            default: cross-entropy with ``cfg.label_smoothing``. It runs under the autocast of
            ``cfg.precision``; the model is in training mode when it is called, and a loss
            that switches it (to eval, for an attack on the batch) switches it back.
        monitor: where progress goes, a stage of one step per optimiser step (default: the active
            monitor, :func:`perturbd.progress.current`; nothing shown when none is).
        description: what is trained, for the progress display and errors.
        lr_name: the setting that holds the learning rate, named when training diverges.
    """
    monitor = monitor if monitor is not None else current()
    device = resolve_device(cfg.device)
    amp = resolve_precision(cfg.precision, device)
    epochs = epochs or cfg.epochs
    model.to(device).train()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    # torch.compile of a Module returns an OptimizedModule (an nn.Module), but its stub says a Callable
    net = cast(nn.Module, torch.compile(model)) if cfg.compile else model
    images = data.images.to(device)
    labels = data.labels.to(device)
    init_from_data = getattr(model, "init_from_data", None)
    if callable(init_from_data):  # e.g. a whitening stem's statistics, before the first step
        init_from_data(to_float01(images[:INIT_IMAGES]))
    aug = resolve_augment(cfg.augment, data.image_shape[0])
    # On CUDA the generator lives on the GPU: random draws need no host-device copy (and sync).
    gen = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)
    n = len(data)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = n // batch  # drop the last partial batch: fixed shapes, stable batch norm
    total = steps_per_epoch * epochs
    base_lr = lr or cfg.lr
    opt = make_optimizer(model, cfg, base_lr)
    lookahead = Lookahead(model, total) if cfg.lookahead else None
    flip_bits = alternating_flips(n, gen) if aug == "shift_flip" else None
    loss_of = loss_fn or _cross_entropy(cfg.label_smoothing)
    result = FitResult()
    monitor.start(description, total)
    started = time.perf_counter()
    step = 0
    try:
        with kernel_choice(device, cfg.deterministic):
            for epoch in range(epochs):
                order = torch.randperm(n, generator=gen, device=gen.device).to(device)
                loss_sum = torch.zeros((), device=device)
                epoch_start = time.perf_counter()
                for b in range(steps_per_epoch):
                    idx = order[b * batch : (b + 1) * batch]
                    flips = None if flip_bits is None else flip_bits[idx] ^ bool(epoch % 2)
                    x = as_device_input(augment(to_float01(images[idx]), aug, gen, flips=flips), device)
                    with autocast(device, amp):
                        loss = loss_of(net, x, labels[idx])
                    for group in opt.param_groups:
                        group["lr"] = base_lr * group["lr_scale"] * lr_factor(cfg.schedule, step, total, cfg.warmup)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
                    opt.step()
                    loss_sum += loss.detach()
                    step += 1
                    if lookahead is not None:
                        lookahead.step(step)
                    monitor.step(batch)
                mean_loss = float(loss_sum) / max(1, steps_per_epoch)  # the epoch's one host sync
                if not math.isfinite(mean_loss):
                    raise ConfigError(
                        f"training ({description}) diverged (loss {mean_loss}) at epoch {epoch + 1}; lower {lr_name} (now {base_lr})"
                    )
                speed = steps_per_epoch * batch / max(1e-9, time.perf_counter() - epoch_start)
                result.losses.append(mean_loss)
                monitor.epoch(epoch + 1, mean_loss, speed)
        if lookahead is not None:
            lookahead.finish()
    finally:
        monitor.stop()  # also when training fails: the monitor's stages stay nested
    result.seconds = time.perf_counter() - started
    result.images_per_s = total * batch / max(1e-9, result.seconds)
    model.eval()
    return result


def _cross_entropy(label_smoothing: float) -> LossFn:
    def loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(net(x).float(), y, label_smoothing=label_smoothing)

    return loss


@torch.no_grad()
def logits(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 1024,
    device: torch.device | None = None,
    precision: str = "auto",
) -> torch.Tensor:
    """Model outputs (float32, on the CPU) for uint8 or float [0, 1] images, in eval mode.

    ``precision`` as ``train.precision``: ``auto`` evaluates under bf16 autocast on CUDA and in
    fp32 on the CPU. Outputs stay on the device until the end: one device-to-host copy in all.
    """
    device = device or next(model.parameters()).device
    amp = resolve_precision(precision, device)
    model.eval()
    outs = []
    for i in range(0, len(images), batch_size):
        x = as_device_input(to_float01(images[i : i + batch_size].to(device)), device)
        with autocast(device, amp):
            outs.append(model(x).float())
    return torch.cat(outs).cpu() if outs else torch.empty(0)


def predict(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 1024,
    device: torch.device | None = None,
    precision: str = "auto",
) -> torch.Tensor:
    """Predicted labels (int64, CPU); arguments as :func:`logits`."""
    return logits(model, images, batch_size, device, precision).argmax(1)
