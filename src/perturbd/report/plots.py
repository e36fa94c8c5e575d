"""The paper's figures from aggregated runs, as PNGs readable on a slide (large type, thick lines).

- ``asr_vs_rate.png``: ASR and accuracy loss versus injection rate, one line per trigger/budget
  (and per any other varying key);
- ``asr_vs_strength.png``: ASR versus amplitude c / budget ξ, one line per trigger family;
- ``stealth_vs_asr.png``: mean PSNR versus ASR, one point per config.

Error bars are the 95 % t-intervals over seeds. A figure whose x axis has a single value is
not drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from perturbd.report.aggregate import Group, Stat

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.typing import RcKeyType

STYLE: dict[RcKeyType, float | bool] = {
    "font.size": 13,
    "axes.titlesize": 15,
    "axes.labelsize": 14,
    "legend.fontsize": 11,
    "xtick.labelsize": 12,
    "ytick.labelsize": 12,
    "lines.linewidth": 2.2,
    "lines.markersize": 7,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
MARKERS = "osD^vP*Xhp<>"


def _ci(stat: Stat) -> float:
    return stat[1] if math.isfinite(stat[1]) else 0.0


def _label(keys: dict[str, Any], skip: set[str]) -> str:
    parts = [_show(k, v) for k, v in keys.items() if k not in skip]
    return ", ".join(parts) or "all runs"


def _show(key: str, value: Any) -> str:
    if key == "trigger":
        return str(value)
    if key == "poison.rate" and isinstance(value, (int, float)):
        return f"rate {100 * value:g} %"
    return f"{key.split('.')[-1]}={value}"


def _series(groups: list[Group], name: Callable[[Group], str], x: Callable[[Group], float]) -> dict[str, list[tuple[float, Group]]]:
    out: dict[str, list[tuple[float, Group]]] = {}
    for g in groups:
        xv = x(g)
        if math.isfinite(xv):
            out.setdefault(name(g), []).append((xv, g))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in out.items()}


def _legend(ax: Axes, n: int) -> None:
    if n > 4:  # beside the axes, never over the data (figures are saved with bbox_inches="tight")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    elif n > 1:
        ax.legend(frameon=False)


def _bars(ys: list[float], es: list[float], bounded: bool) -> list[list[float]]:
    """Lower and upper error-bar lengths; for a rate (``bounded``) cut at 0 and 100 %, where a
    t-interval over two seeds would otherwise reach far outside what a rate can be."""
    if not bounded:
        return [es, es]
    return [[max(0.0, min(e, y)) for y, e in zip(ys, es)], [max(0.0, min(e, 100 - y)) for y, e in zip(ys, es)]]


def _line_panel(ax: Axes, series: dict[str, list[tuple[float, Group]]], metric: str, scale: float = 100.0) -> None:
    for i, (label, pts) in enumerate(series.items()):
        xs = [p[0] for p in pts]
        ys = [scale * p[1].stats[metric][0] for p in pts]
        es = [scale * _ci(p[1].stats[metric]) for p in pts]
        ax.errorbar(xs, ys, yerr=_bars(ys, es, metric == "attack_success_rate"), marker=MARKERS[i % len(MARKERS)], capsize=4, label=label)


def asr_vs_rate(columns: list[str], groups: list[Group], path: Path) -> Path | None:
    """ASR (%) and accuracy loss (points) versus the configured injection rate (%)."""
    if len({g.flat.get("poison.rate") for g in groups}) < 2:
        return None
    series = _series(groups, lambda g: _label(g.keys, {"poison.rate"}), lambda g: 100 * float(g.flat.get("poison.rate", math.nan)))
    with plt.rc_context(STYLE):
        fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5.2), dpi=150)
        _line_panel(a, series, "attack_success_rate")
        a.set(xlabel="injection rate (%)", ylabel="attack success rate (%)", title="Attack success", ylim=(-2, 102))
        _line_panel(b, series, "accuracy_loss")
        b.axhline(0, color="black", linewidth=0.8)
        b.axhline(1, color="grey", linewidth=1, linestyle="--")
        b.set(xlabel="injection rate (%)", ylabel="clean-accuracy loss (points)", title="Accuracy loss (dashed: 1 point)")
        _legend(b, len(series))
        fig.tight_layout()
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
    return path


def asr_vs_strength(columns: list[str], groups: list[Group], path: Path) -> Path | None:
    """ASR (%) versus amplitude c (static masks) or budget ξ (adaptive), one line per family."""
    series = _series(
        groups,
        lambda g: ", ".join(filter(None, [g.trigger.family, _label(g.keys, {"trigger"}) if len(g.keys) > 1 else ""])),
        lambda g: g.trigger.strength,
    )
    series = {k: pts for k, pts in series.items() if len({x for x, _ in pts}) > 1}  # a line, not a lone point
    if not series:
        return None
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8.5, 5.2), dpi=150)
        _line_panel(ax, series, "attack_success_rate")
        ax.set(
            xlabel="amplitude c / budget ξ (pixel units, 0–255)",
            ylabel="attack success rate (%)",
            title="Attack success vs. perturbation size",
            ylim=(-2, 102),
        )
        _legend(ax, len(series))
        fig.tight_layout()
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
    return path


def stealth_vs_asr(columns: list[str], groups: list[Group], path: Path) -> Path | None:
    """Mean PSNR of the poisoned images (dB, higher is stealthier) versus ASR (%)."""
    pts = [g for g in groups if math.isfinite(g.stats["psnr_mean"][0])]
    if len(pts) < 2:
        return None
    by_trigger: dict[str, list[Group]] = {}
    for g in pts:
        by_trigger.setdefault(str(g.keys.get("trigger", g.trigger.family)), []).append(g)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8.5, 5.2), dpi=150)
        for i, (label, gs) in enumerate(by_trigger.items()):
            asr = [100 * g.stats["attack_success_rate"][0] for g in gs]
            ax.errorbar(
                [g.stats["psnr_mean"][0] for g in gs],
                asr,
                xerr=[_ci(g.stats["psnr_mean"]) for g in gs],
                yerr=_bars(asr, [100 * _ci(g.stats["attack_success_rate"]) for g in gs], True),
                marker=MARKERS[i % len(MARKERS)],
                linestyle="none",
                capsize=4,
                label=label,
            )
        ax.set(
            xlabel="PSNR of poisoned images (dB, higher = less visible)",
            ylabel="attack success rate (%)",
            title="Stealth vs. attack success",
            ylim=(-2, 102),
        )
        _legend(ax, len(by_trigger))
        fig.tight_layout()
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
    return path


FIGURES: dict[str, tuple[str, Callable[[list[str], list[Group], Path], Path | None]]] = {
    "asr_vs_rate.png": ("ASR and accuracy loss vs. injection rate", asr_vs_rate),
    "asr_vs_strength.png": ("ASR vs. amplitude / budget", asr_vs_strength),
    "stealth_vs_asr.png": ("Stealth (PSNR) vs. ASR", stealth_vs_asr),
}


def write_figures(columns: list[str], groups: list[Group], folder: Path) -> list[tuple[str, Path]]:
    """Draw every figure that applies into ``folder``; returns ``(title, path)`` of those drawn."""
    folder.mkdir(parents=True, exist_ok=True)
    drawn = []
    for name, (title, draw) in FIGURES.items():
        target = folder / name
        target.unlink(missing_ok=True)
        if draw(columns, groups, target) is not None:
            drawn.append((title, target))
    return drawn
