"""Cross-check perturbd against an independent implementation: IBM ART (issue "numbers a reviewer
can trust", item 14).

ART is NOT a dependency of perturbd; install it into the dev venv only:

    . .venv/bin/activate && pip install adversarial-robustness-toolbox   # checked with 1.20.1

Usage (from the repository root):

    python experiments/crosscheck_art.py [RUN_DIR ...] [--seeds 0,1,2,3,4] [--epsilon 0.1] [--multiplier 1.5]

Without RUN_DIR it checks the two runs of experiments/README.md ("Cross-check against IBM ART"),
made first into experiments/results/crosscheck_art/ if absent (the command is printed).
Writes experiments/results/crosscheck_art.{md,json} and prints the tables.

For each run, on the SAME backdoored model, poisoned training set and labels:
1. activation clustering: perturbd (PCA to 10 dims, 2-means, small share <= 0.35 and silhouette
   >= 0.1) against ART's ActivationDefence (nb_dims=10, reduce="PCA", nb_clusters=2) with
   cluster_analysis "silhouette-scores" (the same rule: share < 0.35 and silhouette > 0.1) as
   shipped, the same with ART's assignment bug repaired (see `art_flags`), and ART's default
   "smaller"; repeated over seeds (perturbd's `seed`; numpy's global seed for ART's unseeded PCA/KMeans);
2. spectral signatures: perturbd (epsilon, multiplier, components=1) against ART's
   SpectralSignatureDefense (expected_pp_poison=epsilon, eps_multiplier=multiplier); both are
   deterministic. ART's per-sample scores are its own `spectral_signature_scores` on its own activations
   (its report holds only the flagged samples' scores; they are checked equal);
3. the trigger: ART's PoisoningAttackBackdoor adding perturbd's trigger as perturbd does (on uint8
   images, rounded and clipped); the model's ASR on ART's images must equal perturbd's.
"""

from __future__ import annotations

import argparse
import glob
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import roc_auc_score

try:
    import art
    from art.attacks.poisoning import PoisoningAttackBackdoor
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier
    from art.utils import segment_by_class
except ImportError:
    sys.exit("IBM ART is missing: pip install adversarial-robustness-toolbox (dev venv only; see the docstring)")

from perturbd.attack import partition
from perturbd.data import load_data
from perturbd.data.dataset import to_float01
from perturbd.defenses import build_defense
from perturbd.metrics import attack_success_rate
from perturbd.poisoning import poison_dataset
from perturbd.runs.folder import RunDir
from perturbd.runs.saved import load_inputs

OUT = Path("experiments/results/crosscheck_art")
RUNS = {  # trigger → overrides of `perturbd run` (embedded mnist5k data, 5 % poison, 10 epochs: as measured)
    "patch": ["trigger.kind=patch", "trigger.amplitude=255", "poison.rate=0.05", "train.epochs=10"],
    "grid": ["trigger.kind=grid", "trigger.amplitude=10", "poison.rate=0.05", "train.epochs=10"],
}
SIZE, SILHOUETTE = 0.35, 0.1  # perturbd's activation-clustering thresholds = ART's silhouette-scores defaults


def ensure_run(kind: str) -> Path:
    """The run directory of RUNS[kind] under OUT, made with `perturbd run` if absent. Git keeps
    run directories without their weights (results/.gitignore): then the run is redone (--force)."""
    found = sorted(glob.glob(str(OUT / f"mnist5k-{kind}-*" / RunDir.MODEL)))
    if not found:
        cmd = ["perturbd", "run", "--out", str(OUT)] + [a for kv in RUNS[kind] for a in ("--set", kv)]
        cmd += ["--force"] if glob.glob(str(OUT / f"mnist5k-{kind}-*" / RunDir.CONFIG)) else []
        print("$", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        found = sorted(glob.glob(str(OUT / f"mnist5k-{kind}-*" / RunDir.MODEL)))
    return Path(found[0]).parent


def load_run(run: Path):
    """(DefenseInputs, poisoned training set as trained on, poison indices into it)."""
    d = load_inputs(run)
    if d.train is not None:
        return d, d.train, d.poison_indices.numpy()
    # load_inputs rebuilds the poison on the whole training split; the victim trains on the
    # partition's `victim` part (the auxiliary share is held out): rebuild that, as the run did.
    cfg = RunDir(run).config()
    train = load_data(cfg.data, cfg.seed).train
    part = partition(cfg, train.labels, train.num_classes)
    p = poison_dataset(part.take(train, part.victim), d.trigger, cfg.poison, cfg.seed, part.poison)
    saved = RunDir(run).poison_indices().indices
    assert p.indices.tolist() == saved, f"rebuilt poison indices differ from the run's {RunDir.POISON_INDICES}"
    print(f"  (load_inputs gave no training set: rebuilt the victim's {len(p.dataset)} images from the partition)")
    return d, p.dataset, p.indices.numpy()


class _Call(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn  # a bound method of the model: not registered again as a module

    def forward(self, x):
        return self.fn(x).flatten(1)


class ArtView(nn.Module):
    """A perturbd model as ART's PyTorchClassifier sees it. ART names the top-level children as
    layers and its poison detectors read layer `len(layer_names) - 1`, the LAST child (in an
    nn.Sequential(features, head) that is the logits). So the head is registered first and the
    features last; forward still returns head(features(x)), the logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.net = model  # the weights (a leaf of the layer list that no detector reads)
        self.logits = _Call(model.head)
        self.features = _Call(model.features)

    def forward(self, x):
        return self.logits(self.features(x))


def wrap(model: nn.Module, train) -> PyTorchClassifier:
    return PyTorchClassifier(
        ArtView(model.eval()),
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(train.image_shape),
        nb_classes=train.num_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


def rates(flags: np.ndarray, poison: np.ndarray) -> tuple[float, float]:
    return float(flags[poison].mean()), float(flags[~poison].mean())


def auroc(scores, poison, mask=None):
    mask = np.ones_like(poison) if mask is None else mask
    return float(roc_auc_score(poison[mask], np.asarray(scores)[mask]))


def art_flags(ac: ActivationDefence, y: np.ndarray, analysis: str) -> np.ndarray:
    """Flags from ART's clusters (already computed) under `analysis`; "repaired": silhouette-scores
    with ART 1.20.1's assignment bug undone. For a suspicious class ART sets `clean_clusters` to
    the small cluster, so the large one is never assigned and keeps np.empty's garbage: detect_poison
    then flags the WHOLE class. Repaired = flag the small cluster of the classes ART calls suspicious."""
    report, assigned = ac.analyze_clusters(cluster_analysis="silhouette-scores" if analysis == "repaired" else analysis)
    flags = np.zeros(len(y), dtype=bool)
    for c, idx in enumerate(segment_by_class(np.arange(len(y)), y, int(y.max()) + 1)):
        if analysis != "repaired":
            flags[idx] = np.asarray(assigned[c], dtype=float) != 1  # as detect_poison: clean iff == 1
        elif report[f"class_{c}"]["suspicious"]:
            clusters = ac.clusters_by_class[c]
            share = np.round(np.bincount(clusters) / len(clusters), 2)
            flags[idx] = share[clusters] < SIZE
    return flags


def check_run(run: Path, seeds: list[int], eps: float, mult: float) -> tuple[list[dict], dict]:
    d, train, pidx = load_run(run)
    model, n = d.model.eval(), len(train)
    poison = np.zeros(n, dtype=bool)
    poison[pidx] = True
    y = train.labels.numpy()
    in_target = y == d.target
    y1h = np.eye(train.num_classes, dtype=np.float32)[y]
    x = to_float01(train.images).numpy()
    clf = wrap(model, train)
    layer = len(clf.layer_names) - 1  # the layer both ART detectors read
    feats_art = clf.get_activations(x, layer=layer, batch_size=128)
    with torch.no_grad():
        feats = model.features(torch.from_numpy(x)).flatten(1).numpy()
    gap = float(np.abs(feats_art - feats).max())
    assert feats_art.shape == feats.shape and gap < 1e-5, f"ART layer {clf.layer_names[layer]} is not model.features ({gap})"
    print(f"  ART layer {layer} '{clf.layer_names[layer]}' = model.features: {feats.shape}, max |diff| {gap:.1e}")
    trig = f"{d.trigger.kind} L∞ {d.trigger.norms()['linf']:g}"
    base = {"run": run.name, "trigger": trig}
    rows, ours = [], {}

    def row(defence, tool, seed, flags, scores=None):
        tpr, fpr = rates(flags, poison)
        ours.setdefault((defence, seed), flags)  # perturbd's row comes first: ART's are compared with it
        rows.append(
            base
            | {
                "defence": defence,
                "tool": tool,
                "seed": seed,
                "flagged": int(flags.sum()),
                "differ": int((flags != ours[(defence, seed)]).sum()),
                "auroc": None if scores is None else auroc(scores, poison),
                "auroc_target": None if scores is None else auroc(scores, poison, in_target),
                "tpr": tpr,
                "fpr": fpr,
            }
        )

    # spectral signatures (deterministic in both tools)
    ss = build_defense("spectral_signature", epsilon=eps, multiplier=mult).fit(model, train)
    row("spectral_signature", "perturbd", "—", ss.flagged_.numpy(), ss.scores_.numpy())
    art_ss = SpectralSignatureDefense(clf, x, y1h, expected_pp_poison=eps, batch_size=128, eps_multiplier=mult)
    report, clean = art_ss.detect_poison()
    scores = np.zeros(n)
    for c in range(train.num_classes):
        scores[y == c] = SpectralSignatureDefense.spectral_signature_scores(feats_art[y == c])[:, 0]
    assert all(np.isclose(v, scores[i], rtol=1e-6) for i, v in report.items()), "ART's report scores differ from its score function"
    row("spectral_signature", "ART", "—", np.asarray(clean) == 0, scores)

    # activation clustering, over seeds
    ac = ActivationDefence(clf, x, y1h)
    for s in seeds:
        p = build_defense(
            "activation_clustering", reduction="pca", components=10, size_threshold=SIZE, silhouette_threshold=SILHOUETTE, seed=s
        ).fit(model, train)
        row("activation_clustering", "perturbd", s, p.flagged_.numpy(), p.scores_.numpy())
        np.random.seed(s)  # ART's PCA and KMeans take no seed: they draw from numpy's global RNG
        _, clean = ac.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA", cluster_analysis="silhouette-scores")
        row("activation_clustering", "ART silhouette-scores (as shipped)", s, np.asarray(clean) == 0)
        row("activation_clustering", "ART silhouette-scores (bug repaired)", s, art_flags(ac, y, "repaired"))
        row("activation_clustering", "ART smaller (its default)", s, art_flags(ac, y, "smaller"))

    # the trigger, applied by ART as perturbd applies it
    keep = d.test.labels != d.target

    def add_trigger(xb: np.ndarray) -> np.ndarray:
        u8 = torch.from_numpy(np.round(xb * 255.0)).to(torch.uint8)
        return to_float01(d.trigger.apply(u8)).numpy()

    xt = to_float01(d.test.images[keep]).numpy()
    xp, _ = PoisoningAttackBackdoor(add_trigger).poison(xt, y=np.full(len(xt), d.target))
    hits = int((clf.predict(xp, batch_size=256).argmax(1) == d.target).sum())
    asr_p = attack_success_rate(model, d.test, d.trigger, d.target)
    print(f"  ASR perturbd {asr_p:.6f}  ART {hits / len(xt):.6f}  ({hits} of {len(xt)} non-target test images)")
    assert round(asr_p * len(xt)) == hits and abs(asr_p - hits / len(xt)) < 1e-6, "ASR differs"
    asr = base | {"asr_perturbd": asr_p, "asr_art": hits / len(xt), "hits": hits, "images": len(xt)}
    print(f"  training set {n} images, {len(pidx)} poisoned; target class {d.target}: {int(in_target.sum())} images")
    return rows, asr


def fmt(v, pct=False):
    if v is None:
        return "—"
    return f"{v:g}" if pct == "n" else f"{100 * v:.1f} %" if pct else f"{v:.3f}"


def spread(vals, pct=False):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "—"
    lo, hi, mean = min(vals), max(vals), sum(vals) / len(vals)
    return fmt(mean, pct) if fmt(lo, pct) == fmt(hi, pct) else f"{fmt(mean, pct)} ({fmt(lo, pct)}–{fmt(hi, pct)})"


def tables(rows: list[dict], asrs: list[dict]) -> str:
    head = (
        "| run | trigger | defence | tool | seeds | AUROC | AUROC in target class | TPR | FPR | flags ≠ perturbd | ASR perturbd / ART |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["run"], r["trigger"], r["defence"], r["tool"]), []).append(r)
    asr = {a["run"]: f"{fmt(a['asr_perturbd'], True)} / {fmt(a['asr_art'], True)}" for a in asrs}
    summary = head + "".join(
        f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {','.join(str(r['seed']) for r in g)} | {spread([r['auroc'] for r in g])} | "
        f"{spread([r['auroc_target'] for r in g])} | {spread([r['tpr'] for r in g], True)} | {spread([r['fpr'] for r in g], True)} | "
        f"{spread([r['differ'] for r in g], 'n')} | {asr[k[0]]} |\n"
        for k, g in groups.items()
    )
    per_seed = head.replace("| seeds |", "| seed |") + "".join(
        f"| {r['run']} | {r['trigger']} | {r['defence']} | {r['tool']} | {r['seed']} | {fmt(r['auroc'])} | {fmt(r['auroc_target'])} | "
        f"{fmt(r['tpr'], True)} | {fmt(r['fpr'], True)} | {r['differ']} | {asr[r['run']]} |\n"
        for r in rows
    )
    return f"{summary}\nEvery seed (mean (min–max) above):\n\n{per_seed}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path, help="perturbd run directories (default: the two runs of RUNS)")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="seeds for activation clustering (both tools)")
    ap.add_argument("--epsilon", type=float, default=0.1, help="spectral signatures: perturbd epsilon = ART expected_pp_poison")
    ap.add_argument("--multiplier", type=float, default=1.5, help="perturbd multiplier = ART eps_multiplier")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    runs = a.runs or [ensure_run(kind) for kind in RUNS]
    rows, asrs = [], []
    for run in runs:
        print(f"{run}:", flush=True)
        r, asr = check_run(run, seeds, a.epsilon, a.multiplier)
        rows += r
        asrs.append(asr)
    md = tables(rows, asrs)
    settings = {
        "seeds": seeds,
        "spectral": {"epsilon": a.epsilon, "multiplier": a.multiplier, "components": 1},
        "activation_clustering": {"nb_dims": 10, "reduce": "PCA", "nb_clusters": 2, "size": SIZE, "silhouette": SILHOUETTE},
        "versions": {"art": art.__version__, "torch": torch.__version__, "numpy": np.__version__},
    }
    Path("experiments/results/crosscheck_art.md").write_text(
        f"# Cross-check against IBM ART {art.__version__}\n\n`python {' '.join(sys.argv)}`; settings: `{json.dumps(settings)}`\n\n{md}"
    )
    Path("experiments/results/crosscheck_art.json").write_text(
        json.dumps({"settings": settings, "asr": asrs, "rows": rows}, indent=1) + "\n"
    )
    print(md)


if __name__ == "__main__":
    main()
