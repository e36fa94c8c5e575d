"""Smallest injection rate that keeps ASR ≥ 90 %: adaptive masks vs the static grid, knowledge none.

The adversary (a surrogate of another architecture trained on auxiliary data the victim never
sees) is trained once; on it, three adaptive masks are computed: L∞ ≤ 10 (the grid's L∞ at
c = 10), L2 ≤ 140 (the grid's L2 on 28×28: 10·√196), and an L2 mask whose budget is set so that
its poisoned images have the grid's mean PSNR (``adaptive-l2-psnr``). Equal mask L2 is not equal
visibility: uint8 clipping removes the part of a mask that pushes black background below 0 or
white strokes above 255, which the all-positive grid on a black background never loses; the
PSNR-matched mask compares the two at equal distortion of the images actually poisoned. The victim's clean twin is trained once. For each
trigger, a search over the rate grid (sorted; binary search, assuming ASR grows with the rate)
trains one backdoored model per rate tried. Every row has ASR, clean accuracy, accuracy loss,
clean-model ASR, and the stealth of the poisoned images (L∞, L2, PSNR, SSIM).

Results are written after every trained model to ``OUT.json`` (a rerun skips rows already there)
and as a Markdown table to ``OUT.md``. ``--restate-ssim`` trains nothing: it rebuilds every row's
poisoned images from the masks saved beside ``OUT.json`` and, if their PSNR is the stored one,
rewrites the rows' SSIM as :func:`perturbd.metrics.stealth` computes it now (``tools/restate_ssim.py``
does the same for run folders).

Usage::

    nice python experiments/min_injection_rate.py --data-root /path/to/datasets \\
        --rates 0.0005,0.001,0.002,0.005,0.01 --epochs 3 --out experiments/results/min_injection_rate
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from perturbd.attack import adaptive_mask, partition, prepare_adversary
from perturbd.attack.visibility import at_psnr, mean_psnr
from perturbd.config import ExperimentConfig, TriggerConfig, load_config, validate
from perturbd.data import load_data
from perturbd.data.dataset import ImageDataset
from perturbd.metrics import attack_success_rate, clean_accuracy, stealth
from perturbd.models import build_from_checkpoint, get_model
from perturbd.poisoning import poison_dataset
from perturbd.process import tune_process
from perturbd.provenance import git_commit
from perturbd.runs.folder import RunDir
from perturbd.runs.twins import TwinStore
from perturbd.train import fit, resolve_device
from perturbd.triggers import Trigger, TriggerContext, build_trigger

GOAL = 0.9


def psnr_matched_mask(base: list[str], adversary: Any, device: torch.device, goal: float, budget: float) -> Trigger:
    """The adaptive L2 mask whose mean PSNR on the adversary's own images is ``goal``: the
    ``trigger.psnr`` search of :func:`perturbd.attack.visibility.at_psnr`, from L2 budget ``budget``."""
    cfg = load_config(overrides=[*base, "trigger.norm=l2", f"trigger.budget={budget:.2f}", f"trigger.psnr={goal}"])

    def build(tc: TriggerConfig) -> Trigger:
        return adaptive_mask(cfg.model_copy(update={"trigger": tc}), adversary, device)

    return at_psnr(cfg.trigger, build, adversary.samples.images, cfg.seed)


def victim(cfg: ExperimentConfig, data: ImageDataset) -> torch.nn.Module:
    # the same initial weights for the twin and every backdoored model
    model = get_model(cfg.model.name, data.image_shape, data.num_classes, seed=cfg.seed)
    fit(model, data, cfg.train, cfg.seed)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--rates", default="0.0005,0.001,0.002,0.005,0.01")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="experiments/results/min_injection_rate")
    ap.add_argument("--set", action="append", default=[], help="extra config override section.key=value")
    ap.add_argument(
        "--reuse-run",
        default=None,
        help="a `perturbd run` directory of the same setup (adaptive L∞ 10, knowledge none, "
        "same seed and epochs): its clean twin and its mask are reused instead of recomputed (they are the same)",
    )
    ap.add_argument("--restate-ssim", action="store_true", help="recompute the SSIM of OUT.json's rows; train nothing")
    args = ap.parse_args()
    rates = sorted(float(r) for r in args.rates.split(","))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
    rows: dict[str, dict[str, Any]] = {f"{r['trigger']}@{r['rate']}": r for r in state.get("rows", [])}

    base = ["data.name=mnist", f"data.root={args.data_root}", "attack.knowledge=none", f"train.epochs={args.epochs}",
            f"seed={args.seed}", "trigger.kind=adaptive", *args.set]  # fmt: skip
    cfg = load_config(overrides=base)
    tune_process(cfg.train.threads)  # this script is the entry point, as `perturbd run` is
    device = resolve_device(cfg.train.device)
    split = load_data(cfg.data, cfg.seed)
    t0 = time.perf_counter()
    part = partition(cfg, split.train.labels, split.train.num_classes)
    victim_train = part.take(split.train, part.victim)
    if args.restate_ssim:
        restate_ssim(out, victim_train, cfg)
        return
    adversary = prepare_adversary(cfg, split.train, part, device, TwinStore())
    print(
        f"adversary {adversary.record['model']['arch']}: held-out accuracy {adversary.record['model']['holdout_accuracy']:.4f} "
        f"({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    reuse = Path(args.reuse_run) if args.reuse_run else None
    if reuse is not None:
        ran = load_config(RunDir(reuse).config_path)
        same = load_config(
            overrides=[*base, "trigger.norm=linf", "trigger.budget=10", f"poison.rate={ran.poison.rate}", f"data.root={ran.data.root}"]
        )
        if ran.model_dump(exclude={"name"}) != same.model_dump(exclude={"name"}):
            raise SystemExit(f"{reuse} is not a run of this setup; drop --reuse-run")
    linf_cfg = load_config(overrides=[*base, "trigger.norm=linf", "trigger.budget=10"])
    grid = build_trigger(  # the reference grid c=10: only its own keys, not the adaptive ones of base
        validate({"kind": "grid", "amplitude": 10}, TriggerConfig),
        TriggerContext(split.train.image_shape, cfg.seed, cfg.poison.target),
    )
    triggers: dict[str, Trigger] = {
        "adaptive-linf10": Trigger.load(RunDir(reuse).trigger_path) if reuse else adaptive_mask(linf_cfg, adversary, device),
        "adaptive-l2-140": adaptive_mask(load_config(overrides=[*base, "trigger.norm=l2", "trigger.budget=140"]), adversary, device),
        "adaptive-l2-psnr": psnr_matched_mask(base, adversary, device, mean_psnr(grid, adversary.samples.images), 140.0),
        "grid-c10": grid,
    }
    for name, trig in triggers.items():
        trig.save(out.parent / f"{out.name}-{name}.safetensors")
        print(f"{name}: {trig.norms()} { ({k: v for k, v in trig.info.items() if 'fooling' in k}) }", flush=True)
    t0 = time.perf_counter()
    if reuse is not None:
        twin = build_from_checkpoint(RunDir(reuse).clean_model_path).eval()
    else:
        twin = victim(cfg, victim_train)
    twin_acc = clean_accuracy(twin, split.test)
    print(f"clean twin accuracy {twin_acc:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    def evaluate(name: str, rate: float) -> dict[str, Any]:
        key = f"{name}@{rate}"
        if key in rows:
            return rows[key]
        trig = triggers[name]
        t = time.perf_counter()
        p = poison_dataset(victim_train, trig, cfg.poison.model_copy(update={"rate": rate}), cfg.seed)
        model = victim(cfg, p.dataset)
        acc = clean_accuracy(model, split.test)
        row = {
            "trigger": name,
            "rate": rate,
            "poisoned": len(p.indices),
            "train_size": len(p.dataset),
            "asr": attack_success_rate(model, split.test, trig, cfg.poison.target),
            "clean_model_asr": attack_success_rate(twin, split.test, trig, cfg.poison.target),
            "clean_accuracy": acc,
            "clean_twin_accuracy": twin_acc,
            "accuracy_loss": twin_acc - acc,
            "trigger_linf": trig.norms()["linf"],
            "trigger_l2": trig.norms()["l2"],
            "stealth": stealth(p.clean_images, p.poisoned_images),
            "seconds": round(time.perf_counter() - t, 1),
            "seed": cfg.seed,
        }
        rows[key] = row
        save()
        print(f"{name} rate {rate}: ASR {row['asr']:.4f} acc {acc:.4f} ({row['seconds']} s)", flush=True)
        return row

    def save() -> None:
        data = {
            "setup": {"data": "mnist (full)", "knowledge": "none", "epochs": args.epochs, "seed": args.seed, "goal_asr": GOAL,
                      "adversary": adversary.record, "triggers": {n: {"kind": t.kind, **t.norms(), **t.info} for n, t in triggers.items()},
                      "clean_twin_accuracy": twin_acc, "victim_train_size": len(victim_train), "rates": rates},
            "rows": sorted(rows.values(), key=lambda r: (r["trigger"], r["rate"])),
        }  # fmt: skip
        data["smallest_rate"] = smallest(data["rows"])
        out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(data))

    # binary search per trigger for the smallest rate with ASR ≥ GOAL, one step of each trigger in
    # turn: if the run is cut short, every trigger has been measured at the same rates so far
    bounds = {name: [0, len(rates) - 1] for name in triggers}
    while any(lo <= hi for lo, hi in bounds.values()):
        for name, (lo, hi) in bounds.items():
            if lo <= hi:
                mid = (lo + hi) // 2
                bounds[name] = [lo, mid - 1] if evaluate(name, rates[mid])["asr"] >= GOAL else [mid + 1, hi]
    save()


def restate_ssim(out: Path, victim_train: ImageDataset, cfg: ExperimentConfig) -> None:
    """Rewrite the SSIM of every row of ``OUT.json`` (and ``OUT.md``) as :func:`stealth` computes it
    now, on the row's poisoned images rebuilt from its saved mask; all rows or none: if one row's
    recomputed PSNR mean or worst is not the stored one (to 1e-6 dB), nothing is written."""
    path = out.with_suffix(".json")
    data = json.loads(path.read_text())
    for row in data["rows"]:
        trig = Trigger.load(out.parent / f"{out.name}-{row['trigger']}.safetensors")
        p = poison_dataset(victim_train, trig, cfg.poison.model_copy(update={"rate": row["rate"]}), cfg.seed)
        now, st = stealth(p.clean_images, p.poisoned_images), row["stealth"]
        if any(abs(now[k] - st[k]) > 1e-6 for k in ("psnr_mean", "psnr_min")):
            raise SystemExit(f"{row['trigger']} at {row['rate']}: the rebuilt images are not the row's (PSNR {now['psnr_mean']:.9g} dB, "
                             f"stored {st['psnr_mean']:.9g}); nothing written")  # fmt: skip
        print(f"{row['trigger']} at {row['rate']}: SSIM mean {st['ssim_mean']:.4f} → {now['ssim_mean']:.4f}", flush=True)
        st |= {"ssim_mean": now["ssim_mean"], "ssim_min": now["ssim_min"]}
    data["ssim_restated"] = {"commit": git_commit(), "variant": "wang2004-valid"}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(data))
    tmp.replace(path)


def smallest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    best: dict[str, Any] = {}
    for r in rows:
        if r["asr"] >= GOAL and (r["trigger"] not in best or r["rate"] < best[r["trigger"]]["rate"]):
            best[r["trigger"]] = {"rate": r["rate"], "poisoned": r["poisoned"], "asr": r["asr"]}
    return best


def markdown(data: dict[str, Any]) -> str:
    s = data["setup"]
    lines = [
        f"# Smallest injection rate with ASR ≥ {100 * GOAL:.0f} % — full MNIST, knowledge none",
        "",
        f"Victim: {s['adversary']['model']['victim_arch']} trained {s['epochs']} epochs on {s['victim_train_size']} images "
        f"(clean twin accuracy {100 * s['clean_twin_accuracy']:.2f} %); adversary: {s['adversary']['model']['arch']} on "
        f"{s['adversary']['data']['size']} disjoint auxiliary images "
        f"(held-out accuracy {100 * s['adversary']['model']['holdout_accuracy']:.2f} %). Seed {s['seed']}.",
        "",
        "| trigger | L∞ | L2 | rate | poisoned | ASR | clean-model ASR | accuracy | acc. loss | PSNR mean (dB) | SSIM mean |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        st = r["stealth"]
        lines.append(
            f"| {r['trigger']} | {r['trigger_linf']:.0f} | {r['trigger_l2']:.1f} | {100 * r['rate']:.2f} % | {r['poisoned']} | "
            f"{100 * r['asr']:.2f} % | {100 * r['clean_model_asr']:.2f} % | {100 * r['clean_accuracy']:.2f} % | "
            f"{100 * r['accuracy_loss']:+.2f} | {st['psnr_mean']:.2f} | {st['ssim_mean']:.4f} |"
        )
    psnr = s["triggers"].get("adaptive-l2-psnr", {})
    if psnr:
        lines += [
            "",
            f"adaptive-l2-psnr: L2 budget {psnr['l2_budget']:g}, chosen so that its mean PSNR on the adversary's images "
            f"({psnr['psnr_on_adversary_images']:.2f} dB) matches the grid's ({psnr['psnr_goal']:.2f} dB).",
        ]
    lines += ["", "Smallest rate reaching the goal (within the grid " + ", ".join(f"{100 * r:g} %" for r in s["rates"]) + "):", ""]
    for name in s["triggers"]:
        b = data["smallest_rate"].get(name)
        lines.append(
            f"- {name}: " + (f"{100 * b['rate']:g} % ({b['poisoned']} poisoned images, ASR {100 * b['asr']:.2f} %)" if b else "not reached")
        )
    if data.get("ssim_restated"):
        r = data["ssim_restated"]
        lines += ["", f"SSIM restated at commit {r['commit'][:10]} ({r['variant']}: Wang et al., valid window) on the rebuilt images."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
