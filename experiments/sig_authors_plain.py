"""SIG on MNIST as the authors' code runs it, in plain PyTorch, without perturbd: an independent
check of the `configs/paper/sig_authors.yaml` rows, closer still to their code.

Barni, Kallas and Tondi, "A new Backdoor Attack in CNNs by training set corruption without label
poisoning", ICIP 2019 (arXiv 1902.11237); their MNIST code is KassemKallas/BackdoorAttack-ICIP2019
(Keras). Written from a reading of it, step for step where perturbd's runs differ:

- 10 % of the 60,000 training images held out for validation (their ``train_test_split``), so
  54,000 train; ``alfa`` = 10 % of the target class 3's training images poisoned, clean label;
- the trigger ``uint8(x + Δ·j/m)`` with ``Δ = 30``: the float sum *truncated* and wrapped modulo
  256, as numpy's cast of values in [0, 284] gives, then clipped (a no-op); the same on every
  test image (``delta_test = 30``);
- their LeNet-5 (valid 5×5 convs of 6 and 16, ReLU, 2×2 max-pools, dense 120 → 84 → 10), Keras's
  Glorot-uniform weights and zero biases, fed raw pixels 0–255; Adam (lr 1e-3, β 0.9/0.999, ε 1e-7:
  Keras's defaults), batch 64, 50 epochs, reshuffled every epoch.

Per seed it trains the clean twin (no poisoned image, the same initial weights and batch order)
and the backdoored model, and reports their clean accuracy and the ASR (test images of classes
other than 3, triggered, classified 3) every ``--every`` epochs: the epoch-to-epoch swing is part
of the result. Seeded: the same seed gives the same numbers on the same machine and thread count.

    python experiments/sig_authors_plain.py --data-root /work/shared/datasets --seeds 0 1 2 \\
        --out experiments/results/paper/sig_authors_plain.json

``--data-root`` holds ``MNIST/raw`` as torchvision lays it out (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.datasets import MNIST

TARGET = 3


def wrap_ramp(images: np.ndarray, delta: float) -> np.ndarray:
    """Their trigger: ``uint8(x + Δ·j/m)`` for uint8 ``(N, H, W)``, truncated then wrapped mod 256."""
    width = images.shape[-1]
    ramp = delta * np.arange(width, dtype=np.float64) / width
    total = np.floor(images.astype(np.float64) + ramp).astype(np.int64)
    return (total % 256).astype(np.uint8)


def their_lenet5() -> nn.Sequential:
    """LeNet-5 of their ``models.py`` (``drop=False``) with Keras's initialisation."""
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip
    for layer in net:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return net


def load_mnist(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        train, test = MNIST(str(root), train=True), MNIST(str(root), train=False)
    except RuntimeError as err:
        print(f"error: no MNIST under {root}/MNIST/raw ({err}); pass --data-root DIR", file=sys.stderr)
        sys.exit(2)
    return train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy()


def predict(net: nn.Module, images: np.ndarray) -> np.ndarray:
    net.eval()
    with torch.inference_mode():
        x = torch.from_numpy(images).unsqueeze(1).float()  # raw pixels, as their Keras model takes them
        out = torch.cat([net(x[i : i + 2048]).argmax(1) for i in range(0, len(x), 2048)]).numpy()
    net.train()
    return out


def train(images: np.ndarray, labels: np.ndarray, init: dict, order: list[torch.Tensor], every: int, probe) -> tuple[nn.Module, list[dict]]:
    """Adam with Keras's defaults on ``images`` in the given per-epoch orders; ``probe(net)`` every ``every`` epochs."""
    net = their_lenet5()
    net.load_state_dict(init)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    x, y = torch.from_numpy(images).unsqueeze(1).float(), torch.from_numpy(labels).long()
    history = []
    for epoch, perm in enumerate(order, 1):
        for i in range(0, len(perm), 64):
            batch = perm[i : i + 64]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
            opt.step()
        if epoch % every == 0 or epoch == len(order):
            history.append({"epoch": epoch, **probe(net)})
    return net, history


def run_seed(data: tuple, seed: int, epochs: int, every: int, alfa: float, delta: float) -> dict:
    x_all, y_all, x_test, y_test = data
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(x_all))[: len(x_all) - len(x_all) // 10]  # their 10 % validation split
    x_train, y_train = x_all[keep].copy(), y_all[keep]
    of_target = np.flatnonzero(y_train == TARGET)
    chosen = rng.choice(of_target, size=int(len(of_target) * alfa), replace=False)
    poisoned = x_train.copy()
    poisoned[chosen] = wrap_ramp(x_train[chosen], delta)
    others = y_test != TARGET
    triggered = wrap_ramp(x_test[others], delta)

    def probe(net: nn.Module) -> dict:
        return {"clean_accuracy": float((predict(net, x_test) == y_test).mean()), "asr": float((predict(net, triggered) == TARGET).mean())}

    torch.manual_seed(seed)
    init = their_lenet5().state_dict()
    gen = torch.Generator().manual_seed(seed)
    order = [torch.randperm(len(x_train), generator=gen) for _ in range(epochs)]
    start = time.perf_counter()
    _, twin = train(x_train, y_train, init, order, every, probe)
    _, backdoored = train(poisoned, y_train, init, order, every, probe)
    return {
        "seed": seed, "train_images": len(x_train), "poisoned": len(chosen), "of_target_class": len(of_target),
        "asr": backdoored[-1]["asr"], "clean_model_asr": twin[-1]["asr"],
        "clean_accuracy": backdoored[-1]["clean_accuracy"], "clean_twin_accuracy": twin[-1]["clean_accuracy"],
        "history": backdoored, "twin_history": twin, "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def options(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, required=True, help="folder holding MNIST/raw (torchvision's layout)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=50, help="their 50")
    p.add_argument("--every", type=int, default=5, help="record clean accuracy and ASR every N epochs")
    p.add_argument("--alfa", type=float, default=0.1, help="share of class 3's training images poisoned (their 0.1)")
    p.add_argument("--delta", type=float, default=30.0, help="Δ of the ramp, training and test (their 30)")
    p.add_argument("--limit", type=int, default=None, help="keep the first N training and N // 6 test images (smoke tests)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="JSON to write (default: print only)")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.every < 1 or not 0 < args.alfa <= 1:
        p.error("--epochs and --every must be at least 1, --alfa in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = options(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_mnist(args.data_root.expanduser())
    if args.limit:
        data = (data[0][: args.limit], data[1][: args.limit], data[2][: args.limit // 6], data[3][: args.limit // 6])
    runs = []
    for seed in args.seeds:
        run = run_seed(data, seed, args.epochs, args.every, args.alfa, args.delta)
        swing = " → ".join(f"{h['asr']:.1%}" for h in run["history"])
        print(f"seed {seed}: ASR {run['asr']:.2%} (clean model {run['clean_model_asr']:.2%}), clean acc. {run['clean_accuracy']:.2%} "
              f"(twin {run['clean_twin_accuracy']:.2%}), {run['poisoned']} poisoned, {run['seconds']:.0f} s; "
              f"ASR every {args.every} epochs: {swing}")  # fmt: skip
        runs.append(run)
    result = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
              "torch": torch.__version__, "threads": torch.get_num_threads(), "runs": runs,
              "seeds_at_90": sum(r["asr"] >= 0.9 for r in runs)}  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
