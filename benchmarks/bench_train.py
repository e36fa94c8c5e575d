"""Trainer throughput: perturbd's ``fit`` against the floor and against the peers' way.

Three contestants train the same architecture from the same initial weights on the same images,
in one process, with the same optimiser (SGD, Nesterov momentum 0.9, weight decay 5e-4):

- ``ours``: :func:`perturbd.train.fit` (uint8 tensors on the device, batched augmentation).
- ``minimal``: a bare hand-written loop over the same in-memory tensors: shuffle, slice, convert,
  forward, backward, step. The same batched crop/flip kernels for colour data, the same autocast
  (``--precision``; ``auto``: bf16 on CUDA, fp32 on a CPU), channels-last on CUDA. Nothing else:
  the floor, and ours / minimal is our overhead.
- ``dataloader``: a ``torch.utils.data.Dataset`` that turns each image into a PIL image and runs
  torchvision transforms on it, fed through a ``DataLoader`` — the way BackdoorBench and
  BackdoorBox feed their trainers: ``ToTensor()`` for digits; ``RandomCrop(32, padding=4)``,
  ``RandomHorizontalFlip()``, ``ToTensor()`` for colour; batch 128; ``--workers`` processes
  (default 2); shuffle; ``pin_memory`` on CUDA; fp32 (their default); ``loss.item()`` per step
  as their trainers log it. Normalisation happens inside the model for all three.

Reported: images per second (training images seen / wall seconds, setup included) and the ratios
ours / minimal (target ≥ 0.9) and ours / dataloader (target ≥ 1.4 on a CPU, ≥ 5 on a GPU).

    python -m benchmarks.bench_train                                    # mnist5k, cnn28
    python -m benchmarks.bench_train --data mnist --data-root DIR       # full MNIST
    python -m benchmarks.bench_train --data cifar10-jpeg --data-root DIR --device cuda
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmarks._common import Series, load_split, machine, parser, pick_device, print_table, timed, write_result
from perturbd.config import TrainConfig
from perturbd.data.augment import random_crop, random_flip, resolve_augment
from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.models import default_model_name, get_model
from perturbd.train import as_device_input, autocast, fit, resolve_precision

NAME = "bench_train"
TARGETS = {"ours/minimal": 0.9, "ours/dataloader_cpu": 1.4, "ours/dataloader_gpu": 5.0}


class PeerDataset(Dataset):
    """One image at a time, as ``torchvision.datasets.MNIST``/``CIFAR10`` serve it: uint8 HWC → PIL → transform."""

    def __init__(self, data: ImageDataset, transform: Any) -> None:
        images = data.images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C), what torchvision keeps
        self.images = images[..., 0] if images.shape[-1] == 1 else images
        self.mode = "L" if images.shape[-1] == 1 else "RGB"
        self.labels = data.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(np.ascontiguousarray(self.images[i]), mode=self.mode)
        return self.transform(img), self.labels[i]


def peer_transform(colour: bool) -> Any:
    from torchvision import transforms as T

    if colour:
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
    return T.Compose([T.ToTensor()])


def sgd(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)


def train_ours(model: nn.Module, data: ImageDataset, args: argparse.Namespace, device: torch.device) -> int:
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=str(device), threads=args.threads, precision=args.precision
    )
    fit(model, data, cfg, seed=args.seed)
    return (len(data) // min(args.batch_size, len(data))) * min(args.batch_size, len(data)) * args.epochs


def train_minimal(model: nn.Module, data: ImageDataset, args: argparse.Namespace, device: torch.device) -> int:
    model.to(device).train()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    amp = resolve_precision(args.precision, device)
    images, labels = data.images.to(device), data.labels.to(device)
    colour = resolve_augment("auto", data.image_shape[0]) == "crop_flip"
    gen = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(args.seed)
    opt = sgd(model, args.lr)
    batch = min(args.batch_size, len(data))
    steps = len(data) // batch
    for _ in range(args.epochs):
        order = torch.randperm(len(data), generator=gen, device=gen.device).to(device)
        for b in range(steps):
            idx = order[b * batch : (b + 1) * batch]
            x = to_float01(images[idx])
            if colour:
                x = random_flip(random_crop(x, 4, gen), gen)
            with autocast(device, amp):
                out = model(as_device_input(x, device))
            loss = F.cross_entropy(out.float(), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return steps * batch * args.epochs


def train_dataloader(model: nn.Module, data: ImageDataset, args: argparse.Namespace, device: torch.device) -> int:
    model.to(device).train()
    loader = DataLoader(
        PeerDataset(data, peer_transform(data.image_shape[0] == 3)),
        batch_size=args.peer_batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )
    opt = sgd(model, args.lr)
    seen = 0
    for _ in range(args.epochs):
        losses = []
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            seen += len(y)
    return seen


CONTESTANTS = {"ours": train_ours, "minimal": train_minimal, "dataloader": train_dataloader}


def model_name(args: argparse.Namespace, data: ImageDataset, device: torch.device) -> str:
    """``--model``; ``auto``: fastnet32 for colour images on CUDA, else the registry's default."""
    if args.model == "auto":
        return "fastnet32" if data.image_shape[0] == 3 and device.type == "cuda" else default_model_name(data.image_shape)
    return str(args.model)


def build(args: argparse.Namespace, data: ImageDataset, device: torch.device) -> nn.Module:
    # every contestant starts from the same weights
    return get_model(model_name(args, data, device), data.image_shape, data.num_classes, seed=args.seed)


def options(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist5k", help="mnist5k, mnist or cifar10-jpeg")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding MNIST/raw and cifar10-jpeg")
    p.add_argument("--limit", type=int, default=None, help="train on a stratified subset of N images")
    p.add_argument("--model", default="auto", help="architecture; auto: cnn28 for digits, cnn32 (CPU) / fastnet32 (GPU) for colour")
    p.add_argument("--epochs", type=int, default=2, help="epochs per timed run")
    p.add_argument("--batch-size", type=int, default=128, help="batch of ours and minimal")
    p.add_argument("--peer-batch-size", type=int, default=128, help="batch of the DataLoader loop (the peers use 128)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="of ours and minimal (train.precision; the DataLoader loop stays fp32)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all usable cores)")
    p.add_argument("--only", nargs="+", choices=list(CONTESTANTS), default=list(CONTESTANTS), help="contestants to run")
    args = p.parse_args(argv)
    if args.quick:
        args.limit, args.epochs, args.repeat = min(args.limit or 2000, 2000), 1, 1
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = options(argv)
    device = pick_device(args.device, args.threads)
    split = load_split(args.data, args.data_root, args.limit, None, args.seed)
    data = split.train
    series = {name: Series(name, "images/s") for name in args.only}
    if not args.quick:  # warm-up (kernels, allocator, thread pools, worker start-up), not timed
        small = data.subset(torch.arange(min(len(data), 4 * args.batch_size)))
        for name in args.only:
            CONTESTANTS[name](build(args, small, device), small, argparse.Namespace(**{**vars(args), "epochs": 1}), device)
    for _ in range(args.repeat):
        for name in args.only:
            model = build(args, data, device)
            seconds, images = timed(lambda: CONTESTANTS[name](model, data, args, device), device)
            series[name].values.append(images / seconds)
    ratios = {f"ours/{k}": series["ours"].mean / series[k].mean for k in series if k != "ours" and "ours" in series}
    kind = "gpu" if device.type == "cuda" else "cpu"
    targets = {"ours/minimal": TARGETS["ours/minimal"], "ours/dataloader": TARGETS[f"ours/dataloader_{kind}"]}
    arch = model_name(args, data, device)
    print_table(
        f"{NAME}: {args.data} ({len(data)} images, {data.image_shape}), {arch}, {args.epochs} epoch(s), {device}",
        ["contestant", "images/s (mean ± std)", "ours / this"],
        [[s.name, s.cell(0), f"{ratios.get('ours/' + s.name, 1.0):.2f}×"] for s in series.values()],
    )
    payload = {
        "benchmark": NAME,
        "machine": machine(device),
        "args": vars(args),
        "model": arch,
        "train_images": len(data),
        "series": {k: s.as_json() for k, s in series.items()},
        "ratios": ratios,
        "targets": {k: v for k, v in targets.items() if k in ratios},
        "met": {k: ratios[k] >= v for k, v in targets.items() if k in ratios},
    }
    print(f"wrote {write_result(args.out, f'{NAME}-{args.data}-{device.type}', payload)}")
    return payload


if __name__ == "__main__":
    main()
