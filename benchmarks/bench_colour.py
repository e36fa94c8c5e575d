"""Accuracy per CPU-second of the colour models: which one a CPU recipe should train.

Each of ``--models`` trains the clean model of a run of ``--config`` (default
``configs/cifar10-cpu.yaml``: CIFAR-10 (JPEG) and the CPU recipe — batch 512, lr 0.4, label
smoothing 0.2, linear warm-up and decay, crop + flip, bf16 autocast, 15 epochs) with only
``model.name`` changed: the victim's own data (the training split less the adversary's auxiliary
share, as in every run), the run seed, the recipe's epochs (``--epochs`` for another count),
trained as a run trains its clean twin (:func:`perturbd.runs.experiment.preflight`, then
:meth:`perturbd.runs.twins.TwinStore.clean_model`). Reported per model and seed: the training seconds (``fit``'s own clock: no evaluation
inside), images per second, and the clean test accuracy. Contestants train one after the other,
each seed in turn, so a change of machine load hits them alike only roughly: check ``uptime``.

A model is *on the frontier* when no other contestant is both faster and more accurate (means
over the seeds); of those, the most accurate one whose mean training time is within
``--slack`` (default 1.1×) of the fastest one's is marked ``pick``: the choice of a user who
puts speed first. Which model perturbd's CPU recipe and ``auto`` take, and why, is in the
README ("Speed").

With ``--recipes`` it compares whole recipes instead (each a config file: model and ``train``
section): for each recipe and seed one complete experiment of that config (its trigger and
poison: ``configs/cifar10-cpu.yaml`` is a grid c = 10 at 1 %), trained from scratch in this
process, one recipe after the other; per recipe the clean twin's training seconds and images
per second, its clean accuracy, the backdoored model's clean accuracy and training seconds, the
ASR and the clean-model ASR.

    python -m benchmarks.bench_colour --data-root DIR                       # cnn32, cnn32_small, fastnet32_small
    python -m benchmarks.bench_colour --data-root DIR --models cnn32 fastnet32_small --seeds 0 1
    python -m benchmarks.bench_colour --data-root DIR --recipes configs/cifar10-cpu-fastnet.yaml configs/cifar10-cpu.yaml
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import Series, machine, parser, pick_device, print_table, write_result
from perturbd.config import load_config
from perturbd.metrics import clean_accuracy
from perturbd.process import tune_process
from perturbd.runs.experiment import preflight, run
from perturbd.runs.folder import RunDir

NAME = "bench_colour"
ROOT = Path(__file__).resolve().parents[1]


def options(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=None, help="folder holding cifar10-jpeg/{train,test}")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "cifar10-cpu.yaml", help="the run whose clean model is trained")
    p.add_argument("--models", nargs="+", default=["cnn32", "cnn32_small", "fastnet32_small"], help="registered 3×32×32 architectures")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="run seeds (one training per model and seed)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the config's)")
    p.add_argument("--slack", type=float, default=1.1, help="the pick: most accurate of the frontier within this factor of the fastest")
    p.add_argument("--tag", default=None, help="added to the result file's name (another epoch count or config)")
    p.add_argument("--recipes", nargs="+", type=Path, default=None, help="config files: compare whole experiments of these recipes")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.seeds, args.epochs = args.models[:2], args.seeds[:1], 1
    return args


def overrides(args: argparse.Namespace, model: str, seed: int) -> list[str]:
    """``--set`` lines turning the config into this contestant's run."""
    sets = [f"model.name={model}", f"seed={seed}", f"train.device={pick_device(args.device)}"]
    if args.epochs is not None:
        sets.append(f"train.epochs={args.epochs}")
    if args.quick:  # tiny generated colour data: a smoke test, not a figure
        sets += ["data.name=synthetic-rgb", "data.train_limit=400", "data.test_limit=100", "train.batch_size=64"]
    elif args.data_root is not None:
        sets.append(f"data.name=imagefolder:{args.data_root.expanduser() / 'cifar10-jpeg'}")
    return sets


def train_once(args: argparse.Namespace, model_name: str, seed: int) -> dict[str, float]:
    """The clean model of one run, trained as the run trains its clean twin: its training
    seconds, images per second and test accuracy."""
    cfg = load_config(args.config, overrides(args, model_name, seed))
    tune_process(cfg.train.threads)  # as `perturbd run` does
    prep = preflight(cfg)
    data = prep.part.take(prep.split.train, prep.part.victim)
    twin = prep.twins.clean_model(cfg, data, prep.device, description=f"{model_name} seed {seed}")
    accuracy = clean_accuracy(twin.model, prep.split.test, precision=cfg.train.precision)
    print(f"{model_name} seed {seed}: {twin.seconds:.1f} s, {twin.images_per_s:.0f} img/s, clean accuracy {accuracy:.2%}", flush=True)
    return {
        "seconds": twin.seconds,
        "images_per_s": twin.images_per_s,
        "clean_accuracy": accuracy,
        "epochs": cfg.train.epochs,
        "train_images": len(data),
    }


def experiment_once(args: argparse.Namespace, config: Path, seed: int) -> dict[str, float]:
    """One whole experiment of ``config`` with ``seed``, everything trained here from scratch:
    the clean twin's seconds, images/s and accuracy; the backdoored model's accuracy and seconds;
    the ASR and the clean-model ASR."""
    cfg = load_config(config, [s for s in overrides(args, "", seed) if not s.startswith("model.name=")])
    tune_process(cfg.train.threads)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(cfg, Path(tmp), force=True)  # no twin cache: both models are trained here
        timing = RunDir(result.run_dir).timing()
    m = result.metrics
    prep_images = (m.poison_set_size // cfg.train.batch_size) * cfg.train.batch_size * cfg.train.epochs
    out = {
        "seconds": timing["train_clean"],
        "images_per_s": prep_images / timing["train_clean"],
        "clean_accuracy": m.clean_twin_accuracy,
        "backdoored_accuracy": m.clean_accuracy,
        "backdoored_seconds": timing["train_backdoored"],
        "asr": m.attack_success_rate,
        "clean_model_asr": m.clean_model_asr,
        "epochs": cfg.train.epochs,
        "train_images": m.poison_set_size,
    }
    print(
        f"{config.name} seed {seed}: twin {out['seconds']:.1f} s, {out['images_per_s']:.0f} img/s, accuracy {out['clean_accuracy']:.2%}; "
        f"backdoored {out['backdoored_accuracy']:.2%}, ASR {out['asr']:.2%} (clean model {out['clean_model_asr']:.2%})",
        flush=True,
    )
    return out


def compare_recipes(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """``--recipes``: one experiment per recipe and seed, side by side."""
    keys = ("seconds", "images_per_s", "clean_accuracy", "backdoored_accuracy", "backdoored_seconds", "asr", "clean_model_asr")
    series = {r.name: {k: Series(r.name, k) for k in keys} for r in args.recipes}
    for seed in args.seeds:
        for recipe in args.recipes:
            out = experiment_once(args, recipe, seed)
            for k in keys:
                series[recipe.name][k].values.append(out[k])
            series[recipe.name]["seconds"].extra.update(epochs=out["epochs"], train_images=out["train_images"])
    print_table(
        f"{NAME}: whole experiments, seeds {args.seeds}, {device}",
        ["recipe", "twin train s", "images/s", "twin accuracy", "backdoored accuracy", "ASR", "clean-model ASR"],
        [
            [
                name,
                s["seconds"].cell(1),
                s["images_per_s"].cell(0),
                " · ".join(f"{a:.2%}" for a in s["clean_accuracy"].values),
                " · ".join(f"{a:.2%}" for a in s["backdoored_accuracy"].values),
                " · ".join(f"{a:.2%}" for a in s["asr"].values),
                " · ".join(f"{a:.2%}" for a in s["clean_model_asr"].values),
            ]
            for name, s in series.items()
        ],
    )  # fmt: skip
    return {"recipes": {name: {k: v.as_json() for k, v in s.items()} for name, s in series.items()}}


def frontier(means: dict[str, dict[str, float]]) -> list[str]:
    """The contestants no other one beats in both training time and accuracy."""

    def beats(o: dict[str, float], m: dict[str, float]) -> bool:
        return o["seconds"] <= m["seconds"] and o["clean_accuracy"] >= m["clean_accuracy"] and o != m

    return [a for a, m in means.items() if not any(beats(o, m) for b, o in means.items() if b != a)]


def pick(means: dict[str, dict[str, float]], slack: float) -> str:
    """The most accurate model of the frontier whose time is within ``slack`` × the fastest's."""
    front = frontier(means)
    fastest = min(means[m]["seconds"] for m in front)
    return max((m for m in front if means[m]["seconds"] <= slack * fastest), key=lambda m: means[m]["clean_accuracy"])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = options(argv)
    if not args.quick and args.data_root is None:
        raise SystemExit("bench_colour needs --data-root (the folder holding cifar10-jpeg), or --quick")
    device = pick_device(args.device)
    if args.recipes:
        payload = {"benchmark": NAME, "machine": machine(device), "args": vars(args), **compare_recipes(args, device)}
        name = "-".join([NAME, "recipes", "synthetic" if args.quick else "cifar10-jpeg", device.type, *([args.tag] if args.tag else [])])
        print(f"wrote {write_result(args.out, name, payload)}")
        return payload
    seconds = {m: Series(m, "s") for m in args.models}
    accuracy = {m: Series(m, "accuracy") for m in args.models}
    speed = {m: Series(m, "images/s") for m in args.models}
    for seed in args.seeds:
        for name in args.models:
            out = train_once(args, name, seed)
            seconds[name].values.append(out["seconds"])
            accuracy[name].values.append(out["clean_accuracy"])
            speed[name].values.append(out["images_per_s"])
            seconds[name].extra.update(epochs=out["epochs"], train_images=out["train_images"])
    means = {m: {"seconds": seconds[m].mean, "clean_accuracy": accuracy[m].mean} for m in args.models}
    front, chosen = frontier(means), pick(means, args.slack)
    print_table(
        f"{NAME}: clean model of {args.config.name}, seeds {args.seeds}, {device}",
        ["model", "train s (mean ± std)", "images/s", "clean accuracy per seed", "frontier"],
        [
            [
                m,
                seconds[m].cell(1),
                speed[m].cell(0),
                " · ".join(f"{a:.2%}" for a in accuracy[m].values),
                "pick" if m == chosen else ("yes" if m in front else ""),
            ]
            for m in args.models
        ],
    )  # fmt: skip
    payload = {
        "benchmark": NAME,
        "machine": machine(device),
        "args": vars(args),
        "train_seconds": {m: s.as_json() for m, s in seconds.items()},
        "clean_accuracy": {m: s.as_json() for m, s in accuracy.items()},
        "images_per_s": {m: s.as_json() for m, s in speed.items()},
        "frontier": front,
        "pick": chosen,
        "met": {},
    }
    name = "-".join([NAME, "synthetic" if args.quick else "cifar10-jpeg", device.type, *([args.tag] if args.tag else [])])
    print(f"wrote {write_result(args.out, name, payload)}")
    return payload


if __name__ == "__main__":
    main()
