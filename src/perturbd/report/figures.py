"""PNG figures of triggers and poisoned samples (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from perturbd.data.dataset import to_float01

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def amplify(delta: torch.Tensor) -> np.ndarray:
    """Map a mask to an image in [0, 1]: 0.5 is zero, ±max|δ| are 0 and 1. Returns ``(H, W[, 3])``."""
    scale = float(delta.abs().max()) or 1.0
    img = (0.5 + 0.5 * delta / scale).clamp(0, 1)
    return _hwc(img)


def _hwc(img: torch.Tensor) -> np.ndarray:
    arr = img.detach().cpu().float().numpy()
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def _show(ax: Axes, img: np.ndarray, title: str | None = None) -> None:
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def trigger_png(delta: torch.Tensor, path: Path, title: str = "") -> None:
    """Write the mask amplified to be seen (grey = 0; the scale is in the caption)."""
    fig, ax = plt.subplots(figsize=(3, 3.3), dpi=120)
    _show(ax, amplify(delta), f"{title}\nδ ×{127.5 / max(1e-9, float(delta.abs().max())):.0f} (grey = 0)".strip())
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def samples_png(clean: torch.Tensor, poisoned: torch.Tensor, path: Path, count: int = 6) -> None:
    """Rows: clean, poisoned, difference amplified; one column per sample."""
    count = min(count, len(clean))
    if count == 0:
        return
    fig, axes = plt.subplots(3, count, figsize=(1.5 * count, 4.8), dpi=120, squeeze=False)
    a, b = to_float01(clean[:count]), to_float01(poisoned[:count])
    for j in range(count):
        diff = (b[j] - a[j]) * 255.0
        _show(axes[0, j], _hwc(a[j]), "clean" if j == 0 else None)
        _show(axes[1, j], _hwc(b[j]), "poisoned" if j == 0 else None)
        _show(axes[2, j], amplify(diff), "difference (amplified)" if j == 0 else None)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def trigger_sheet(
    delta: torch.Tensor, clean: torch.Tensor, poisoned: torch.Tensor, path: Path, title: str = "", linf: float | None = None
) -> None:
    """One picture for a slide: the mask amplified, then clean and poisoned samples side by side.
    ``linf``: the L∞ to print (default: of round(δ)); a non-additive trigger passes the largest
    change it made to the samples, its ``delta`` being their mean change."""
    count = min(4, len(clean))
    fig, axes = plt.subplots(2, count + 1, figsize=(1.7 * (count + 1), 3.8), dpi=120, squeeze=False)
    _show(axes[0, 0], amplify(delta), "trigger (amplified)")
    axes[1, 0].axis("off")
    linf = float(torch.round(delta).abs().max()) if linf is None else linf
    axes[1, 0].text(0.0, 0.5, f"{title}\nL∞ = {linf:.0f} / 255", fontsize=9, va="center")
    a, b = to_float01(clean[:count]), to_float01(poisoned[:count])
    for j in range(count):
        _show(axes[0, j + 1], _hwc(a[j]), "clean")
        _show(axes[1, j + 1], _hwc(b[j]), "poisoned")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
