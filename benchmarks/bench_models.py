"""Training-step throughput of registered architectures, by precision: which model a CPU can afford.

For each ``--models`` × ``--precisions``: the architecture built from ``--seed``, one SGD step
(Nesterov momentum 0.9, as :func:`perturbd.train.fit`) on a fixed random batch of ``--batch``
float images of ``--shape`` held channels-last, cross-entropy under the precision's autocast
(``fp32``: none; ``bf16``: ``torch.autocast`` to bfloat16 — fast on a CPU only with AMX or
AVX512-BF16). Three untimed warm-up steps, then ``--steps`` timed steps per repeat; repeats are
interleaved across the contestants. Reported: images per second (mean ± std over repeats), the
parameter count and the forward multiply-accumulates per image (counted by a forward hook on
every conv and linear layer). No data loading and no augmentation: the arithmetic of the model
alone, which is what choosing an architecture for a machine needs; ``bench_train`` times the
whole trainer and ``bench_e2e`` whole experiments.

Beside it, the arithmetic ceiling: the floating-point operations of one training step per image
(forward, backward and all, counted by ``torch.utils.flop_counter``), the machine's dense fp32
and bf16 matrix-multiply rates (``--peak-size``² matrices, best of the repeats: what the CPU's
BLAS reaches at its best), and so the GFLOP/s each contestant reaches and its share of the fp32
rate and of its own precision's rate. A training
throughput that would need more than 100 % of it is out of this machine's reach for that model.

    python -m benchmarks.bench_models                      # 3×32×32: cnn32, fastnet32_small, fastnet32
    python -m benchmarks.bench_models --models cnn28 --shape 1 28 28 --precisions fp32 bf16
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._common import Series, machine, parser, pick_device, print_table, timed, write_result
from perturbd.models import get_model

NAME = "bench_models"


def sizes_of(name: str, shape: Sequence[int]) -> dict[str, int]:
    """Parameters and forward multiply-accumulates per image of a fresh ``name`` on the CPU."""
    model = get_model(name, shape, 10, seed=0)
    return {"parameters": sum(p.numel() for p in model.parameters()), "forward_macs": forward_macs(model, shape)}


def forward_macs(model: nn.Module, shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of one image (conv and linear layers only);
    leaves ``model`` in eval mode."""
    total = 0

    def count(module: nn.Module, _: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.weight[0].numel()  # C_in / groups × kH × kW
            total += out[0].numel() * k
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.rand(1, *shape))
    for h in hooks:
        h.remove()
    return total


def train_flops(name: str, shape: Sequence[int], batch: int = 16) -> float:
    """Floating-point operations of one training step (forward, loss, backward) per image."""
    model = get_model(name, shape, 10, seed=0).train()
    x, y = torch.rand(batch, *shape), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def matmul_peak(size: int, repeat: int, device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of a dense ``size × size`` matrix product in ``dtype`` on ``device``, best of ``repeat``."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen).to(device, dtype) for _ in range(2))
    a @ b  # warm-up
    best = 0.0
    for _ in range(repeat):
        seconds, _ = timed(lambda: [a @ b for _ in range(5)], device)
        best = max(best, 5 * 2 * size**3 / seconds / 1e9)
    return best


def trainer(name: str, shape: Sequence[int], precision: str, batch: int, device: torch.device, seed: int):
    """A function running one training step of ``name`` (in training mode: batch statistics)."""
    model = get_model(name, shape, 10, seed=seed).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *shape, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)

    def step() -> None:
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with amp:
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def options(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cnn32", "fastnet32_small", "fastnet32"], help="registered architectures")
    p.add_argument("--shape", nargs=3, type=int, default=[3, 32, 32], metavar=("C", "H", "W"))
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--peak-size", type=int, default=2048, help="side of the matrices of the fp32 matmul ceiling")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.steps, args.repeat, args.peak_size = args.models[:1], 16, 2, 1, 128
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = options(argv)
    device = pick_device(args.device)
    contestants: dict[tuple[str, str], tuple[Any, Series]] = {}
    sizes = {name: sizes_of(name, args.shape) | {"train_flops": train_flops(name, args.shape)} for name in args.models}
    for name in args.models:
        for precision in args.precisions:
            step = trainer(name, args.shape, precision, args.batch, device, args.seed)
            for _ in range(3):
                step()
            contestants[name, precision] = (step, Series(f"{name} {precision}", "images/s"))
    for _ in range(args.repeat):
        for step, series in contestants.values():
            seconds, _ = timed(lambda: [step() for _ in range(args.steps)], device)
            series.values.append(args.steps * args.batch / seconds)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {p: matmul_peak(args.peak_size, max(args.repeat, 3), device, dtypes[p]) for p in ("fp32", "bf16")}
    peak = peaks["fp32"]
    share = {s.name: s.mean * sizes[name]["train_flops"] / 1e9 / peak for (name, _), (_, s) in contestants.items()}
    share_own = {s.name: s.mean * sizes[name]["train_flops"] / 1e9 / peaks[precision] for (name, precision), (_, s) in contestants.items()}
    print_table(
        f"{NAME}: one training step, batch {args.batch}, {'×'.join(map(str, args.shape))}, {device}; "
        f"matmul fp32 {peaks['fp32']:.1f}, bf16 {peaks['bf16']:.1f} GFLOP/s",
        ["model", "precision", "images/s (mean ± std)", "parameters", "MMAC / image", "MFLOP / image trained", "GFLOP/s",
         "of fp32 matmul", "of its precision's matmul"],
        [
            [name, precision, s.cell(0), f"{sizes[name]['parameters']:,}", f"{sizes[name]['forward_macs'] / 1e6:.1f}",
             f"{sizes[name]['train_flops'] / 1e6:.2f}", f"{s.mean * sizes[name]['train_flops'] / 1e9:.1f}", f"{share[s.name]:.0%}",
             f"{share_own[s.name]:.0%}"]
            for (name, precision), (_, s) in contestants.items()
        ],
    )  # fmt: skip
    payload = {
        "benchmark": NAME,
        "machine": machine(device),
        "args": vars(args),
        "images_per_s": {s.name: s.as_json() for _, s in contestants.values()},
        "sizes": sizes,
        "matmul_peak_gflops": peak,
        "matmul_peak_gflops_by_precision": peaks,
        "share_of_matmul_peak": share,
        "share_of_own_precision_matmul_peak": share_own,
        "met": {},
    }
    name = "-".join([NAME, "x".join(map(str, args.shape)), device.type])
    print(f"wrote {write_result(args.out, name, payload)}")
    return payload


if __name__ == "__main__":
    main()
