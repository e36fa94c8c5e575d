"""Neural Cleanse: all labels in one batch against label by label.

Both contestants are :class:`perturbd.defenses.neural_cleanse.NeuralCleanse` with the same
parameters (epochs, batch, learning rate, clean images, seed; the reference's schedule) and
differ only in ``mode``: ``batched`` optimises the K masks and patterns as one tensor (one forward
over K × batch images per mini-batch); ``loop`` runs the same optimisation once per label. The optimisation is the same, so
the recovered mask norms should agree; the JSON records their largest difference. The victim is
a cnn28 trained on mnist5k for ``--train-epochs`` (or ``--checkpoint``); training is not timed.

Both modes do the same arithmetic; batching only removes per-call overhead. The *batching
ceiling* printed and saved with the result bounds the gain on this machine: seconds per image of
one forward + input-gradient backward at ``--batch-size`` over the same at K × ``--batch-size``
(:func:`benchmarks._common.batching_ceiling`).

    python -m benchmarks.bench_neural_cleanse --epochs 10
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks._common import Series, batching_ceiling, load_split, machine, parser, pick_device, print_table, speedup, timed, write_result
from perturbd.config import TrainConfig
from perturbd.data.dataset import DataSplit
from perturbd.defenses.neural_cleanse import NeuralCleanse
from perturbd.models import build_from_checkpoint, get_model
from perturbd.train import fit

NAME = "bench_neural_cleanse"
TARGET_SPEEDUP = 5.0
MODES = ("batched", "loop")


def victim(args: argparse.Namespace, split: DataSplit, device: torch.device) -> nn.Module:
    if args.checkpoint is not None:
        return build_from_checkpoint(args.checkpoint).to(device).eval()
    model = get_model("auto", split.train.image_shape, split.train.num_classes, seed=args.seed)
    fit(model, split.train, TrainConfig(epochs=args.train_epochs, device=str(device)), seed=args.seed)
    return model.eval()


def options(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist5k", help="mnist5k, mnist or cifar10-jpeg")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--train-limit", type=int, default=None, help="victim training images (stratified subset)")
    p.add_argument("--train-epochs", type=int, default=3, help="epochs of the victim model (not timed)")
    p.add_argument("--checkpoint", type=Path, default=None, help="victim .safetensors instead of training one")
    p.add_argument("--epochs", type=int, default=10, help="epochs of min(n_clean, 1000) // batch_size mini-batches (reference: 1,000)")
    p.add_argument("--batch-size", type=int, default=32, help="clean images per step")
    p.add_argument("--n-clean", type=int, default=1000, help="clean images the mini-batches are drawn from")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.n_clean, args.repeat = min(args.epochs, 1), min(args.n_clean, 300), 1
        args.train_limit, args.train_epochs = min(args.train_limit or 1000, 1000), 1
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = options(argv)
    device = pick_device(args.device)
    split = load_split(args.data, args.data_root, args.train_limit, None, args.seed)
    model = victim(args, split, device)
    params = {"epochs": args.epochs, "batch_size": args.batch_size, "n_clean": args.n_clean, "seed": args.seed}
    series = {mode: Series(mode, "s") for mode in MODES}
    norms: dict[str, torch.Tensor] = {}
    for _ in range(args.repeat):
        for mode in MODES:
            seconds, nc = timed(lambda: NeuralCleanse(**params, mode=mode).fit(model, split.test), device)
            series[mode].values.append(seconds)
            norms[mode] = nc.norms_
            series[mode].extra = {"flagged_labels": nc.flagged_labels_, "mask_l1": nc.norms_.tolist()}
    ratio = speedup(series["loop"], series["batched"])
    difference = float((norms["batched"] - norms["loop"]).abs().max())
    k = split.train.num_classes
    print_table(
        f"{NAME}: {k} labels × {args.epochs} epochs × {args.n_clean // args.batch_size} batches of {args.batch_size}, {device}",
        ["mode", "seconds (mean ± std)", "loop / this"],
        [[m, series[m].cell(2), f"{speedup(series['loop'], series[m]):.1f}×"] for m in MODES],
    )
    print(f"largest difference of the recovered mask L1 norms, batched vs loop: {difference:.3g} pixels")
    ceiling = batching_ceiling(model, split.train.image_shape, args.batch_size, k * args.batch_size, device, 64 if args.quick else 512)
    print(
        f"batching ceiling of this machine (model forward + input gradient, per image, batch {args.batch_size} / "
        f"batch {k * args.batch_size}): {ceiling['ceiling']:.1f}×"
    )
    payload = {
        "benchmark": NAME,
        "machine": machine(device),
        "args": vars(args),
        "labels": k,
        "series": {m: s.as_json() for m, s in series.items()},
        "speedup_loop_over_batched": ratio,
        "max_mask_l1_difference": difference,
        "target_speedup": TARGET_SPEEDUP,
        "met": ratio >= TARGET_SPEEDUP,
        "batching_ceiling": ceiling,
    }
    print(f"wrote {write_result(args.out, NAME, payload)}")
    return payload


if __name__ == "__main__":
    main()
