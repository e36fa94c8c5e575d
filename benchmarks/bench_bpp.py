"""BppAttack's Floyd–Steinberg dithering: the batched wavefront against the per-pixel scan.

Contestants: :func:`perturbd.triggers.bpp.floyd_steinberg` (the whole batch, one vectorised step
per line ``x + 2y = t``) and :func:`perturbd.triggers.bpp.floyd_steinberg_reference` (the
authors' scan, one pixel at a time, in Python, on ``--reference-images`` of the same images).
Both squeeze seeded uniform-random images to ``--levels`` colour levels; the figure is images
per second, and the JSON records whether the two agree bit for bit on the reference's images.

    python -m benchmarks.bench_bpp --images 1000 --repeat 3
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from benchmarks._common import Series, machine, parser, pick_device, print_table, timed, write_result
from perturbd.triggers.bpp import floyd_steinberg, floyd_steinberg_reference

NAME = "bench_bpp"


def options(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000, help="images in the batch the wavefront squeezes")
    p.add_argument("--reference-images", type=int, default=5, help="of those, how many the per-pixel scan squeezes")
    p.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32], help="C H W")
    p.add_argument("--levels", type=float, default=8.0, help="colour levels k (the authors' squeeze_num)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: every usable core)")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.reference_images, args.repeat = 20, 1, 1
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = options(argv)
    device = pick_device(args.device, args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (args.images, *args.shape), generator=gen).double()
    few = images[: args.reference_images].numpy()
    series = {"wavefront": Series("wavefront", "images/s"), "reference": Series("reference", "images/s")}
    on_device = images.to(device)
    out = floyd_steinberg(on_device, args.levels)  # warm-up
    for _ in range(args.repeat):
        seconds, out = timed(lambda: floyd_steinberg(on_device, args.levels), device)
        series["wavefront"].values.append(args.images / seconds)
        seconds, ref = timed(lambda: np.stack([floyd_steinberg_reference(im, args.levels) for im in few]), torch.device("cpu"))
        series["reference"].values.append(len(few) / seconds)
    agree = bool(np.array_equal(out[: len(few)].cpu().numpy(), ref))
    ratio = series["wavefront"].mean / series["reference"].mean
    print_table(
        f"{NAME}: {args.images} images of {tuple(args.shape)}, {args.levels:g} levels, {device}",
        ["contestant", "images/s (mean ± std)"],
        [[name, s.cell(0)] for name, s in series.items()],
    )
    print(f"wavefront / reference: {ratio:,.0f}×; bit for bit the same on {len(few)} images: {agree}")
    payload = {
        "benchmark": NAME,
        "machine": machine(device),
        "args": vars(args),
        "series": {name: s.as_json() for name, s in series.items()},
        "speedup": ratio,
        "identical": agree,
        "met": agree,
    }
    print(f"wrote {write_result(args.out, NAME, payload)}")
    return payload


if __name__ == "__main__":
    main()
