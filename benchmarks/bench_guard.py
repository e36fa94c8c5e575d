"""perturbd.guard: images per second with and without the guard, for every registered input detector.

The bare contestant is the model's forward pass over ``--images`` test images in batches of
``--batch-size`` (eval mode, no gradient); each guarded contestant is
:func:`perturbd.guard` of the same model with one input-level detector (every detector of kind
``input`` registered, or those named with ``--detector``), fitted with its defaults on up to
``--n-clean`` clean training images (fitting is not timed), over the same batches: the logits plus
the detector's score and flag of every input. The overhead is the bare rate over the guarded one.
The model is a ``--arch`` network for the data's shape, trained for ``--train-epochs`` (not timed;
throughput does not depend on the weights, the detectors' verdicts do).

    python -m benchmarks.bench_guard --device cpu
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import perturbd
from benchmarks._common import Series, load_split, machine, parser, pick_device, print_table, timed, write_result
from perturbd.config import TrainConfig
from perturbd.data.dataset import to_float01
from perturbd.defenses import build_defense, get_defense, list_defenses
from perturbd.models import get_model
from perturbd.train import fit

NAME = "bench_guard"


def options(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist5k", help="mnist5k, mnist or cifar10-jpeg")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--arch", default="auto", help="registered architecture of the guarded model")
    p.add_argument("--train-epochs", type=int, default=1, help="epochs of the guarded model (not timed)")
    p.add_argument("--images", type=int, default=1024, help="test images screened per timed run")
    p.add_argument("--batch-size", type=int, default=256, help="images per call of the model or the guard")
    p.add_argument("--n-clean", type=int, default=2000, help="clean training images a detector is fitted on at most")
    p.add_argument("--detector", action="append", default=None, help="an input detector (repeatable; default: every one registered)")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.batch_size, args.n_clean, args.repeat, args.train_epochs = 32, 16, 200, 1, 1
    return args


def detectors(args: argparse.Namespace) -> list[str]:
    names = args.detector or [n for n in list_defenses() if get_defense(n).kind == "input"]
    wrong = [n for n in names if get_defense(n).kind != "input"]
    if wrong:
        raise SystemExit(f"--detector takes input-level detectors, got {wrong}")
    return names


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = options(argv)
    device = pick_device(args.device)
    names = detectors(args)
    split = load_split(args.data, args.data_root, max(args.n_clean, 1000) if args.quick else None, args.images, args.seed)
    model = get_model(args.arch, split.train.image_shape, split.train.num_classes, seed=args.seed)
    fit(model, split.train, TrainConfig(epochs=args.train_epochs, device=str(device)), seed=args.seed)
    model = model.to(device).eval()
    clean = split.train.subset(torch.randperm(len(split.train), generator=torch.Generator().manual_seed(args.seed))[: args.n_clean])
    images = split.test.images[: args.images]
    batches = [images[i : i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    seeded = {n: {"seed": args.seed} if "seed" in get_defense(n).Params.model_fields else {} for n in names}
    guards = {n: perturbd.guard(model, build_defense(n, **seeded[n]).fit(model, clean)) for n in names}

    @torch.no_grad()
    def bare() -> int:
        return sum(len(model(to_float01(b.to(device)))) for b in batches)

    def guarded(name: str) -> int:
        return sum(int(guards[name](b).flagged.sum()) for b in batches)

    contestants = {"model": bare, **{f"guard[{n}]": (lambda n=n: guarded(n)) for n in names}}
    series = {c: Series(c, "images/s") for c in contestants}
    flagged: dict[str, int] = {}
    for _ in range(args.repeat):
        for c, fn in contestants.items():
            seconds, out = timed(fn, device)
            series[c].values.append(len(images) / seconds)
            if c != "model":
                flagged[c] = out
    for c in flagged:
        series[c].extra = {"flagged_of_clean_test_images": flagged[c], "overhead": series["model"].mean / series[c].mean}
    print_table(
        f"{NAME}: {len(images)} test images of {args.data} in batches of {args.batch_size}, {args.arch}, {device}",
        ["contestant", "images/s (mean ± std)", "bare / this", "flagged"],
        [
            [c, s.cell(1), f"{series['model'].mean / s.mean:.1f}×", str(flagged.get(c, "")) if c in flagged else "-"]
            for c, s in series.items()
        ],
    )
    payload = {
        "benchmark": NAME,
        "machine": machine(device),
        "args": vars(args),
        "detectors": names,
        "series": {c: s.as_json() for c, s in series.items()},
        "met": None,  # no target: the issue asks for the figure (images/s with and without the guard)
    }
    print(f"wrote {write_result(args.out, f'{NAME}-{device.type}', payload)}")
    return payload


if __name__ == "__main__":
    main()
