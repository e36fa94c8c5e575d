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
from perturbd.data.augment import augment, resolve_augment
from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.errors import ConfigError
from perturbd.progress import Monitor, SilentMonitor, current

__all__ = [  # Monitor and SilentMonitor live in perturbd.progress and are re-exported here, where they were
    "FitResult", "LossFn", "Monitor", "SilentMonitor", "as_device_input", "autocast", "fit", "kernel_choice", "logits",
    "lr_factor", "make_optimizer", "predict", "resolve_device", "resolve_precision",
]  # fmt: skip

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


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


def make_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)


def lr_factor(schedule: str, step: int, total: int, warmup: float = 0.0) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total`` (per optimiser step).

    The first ``warmup`` fraction of the steps rises linearly to 1 (step 0 gets ``1 / w``, not 0,
    so no step is wasted); ``schedule`` then runs over the remaining steps.

    A closed form, not ``torch.optim.lr_scheduler`` (LinearLR, CosineAnnealingLR, MultiStepLR
    in a SequentialLR): their factors are updated step by step and differ from it in the last
    bits (up to 1.8e-14 relative over 400 steps), which would change every trained model.
    """
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
    aug = resolve_augment(cfg.augment, data.image_shape[0])
    # On CUDA the generator lives on the GPU: random draws need no host-device copy (and sync).
    gen = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)
    n = len(data)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = n // batch  # drop the last partial batch: fixed shapes, stable batch norm
    total = steps_per_epoch * epochs
    base_lr = lr or cfg.lr
    opt = make_optimizer(model, cfg, base_lr)
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
                    x = as_device_input(augment(to_float01(images[idx]), aug, gen), device)
                    with autocast(device, amp):
                        loss = loss_of(net, x, labels[idx])
                    for group in opt.param_groups:
                        group["lr"] = base_lr * lr_factor(cfg.schedule, step, total, cfg.warmup)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
                    opt.step()
                    loss_sum += loss.detach()
                    step += 1
                    monitor.step(batch)
                mean_loss = float(loss_sum) / max(1, steps_per_epoch)  # the epoch's one host sync
                if not math.isfinite(mean_loss):
                    raise ConfigError(
                        f"training ({description}) diverged (loss {mean_loss}) at epoch {epoch + 1}; lower {lr_name} (now {base_lr})"
                    )
                speed = steps_per_epoch * batch / max(1e-9, time.perf_counter() - epoch_start)
                result.losses.append(mean_loss)
                monitor.epoch(epoch + 1, mean_loss, speed)
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
