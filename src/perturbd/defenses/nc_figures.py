"""Neural Cleanse's figures (matplotlib, Agg backend): the recovered trigger of a label and the
reversed masks' L1 norms per label. :mod:`~perturbd.defenses.neural_cleanse` and
:mod:`~perturbd.defenses.update_audit` (which runs Neural Cleanse) draw them."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import torch


def _img(t: torch.Tensor) -> npt.NDArray[np.float32]:
    arr = t.detach().cpu().float().clamp(0, 1).numpy()
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    return arr


def recovered_trigger_png(mask: torch.Tensor, pattern: torch.Tensor, path: Path, title: str = "") -> None:
    """Neural Cleanse's recovered trigger: mask ``(H, W)``, pattern ``(C, H, W)`` and their product."""
    fig, axes = plt.subplots(1, 3, figsize=(7.2, 2.9), dpi=120)
    panels = [(mask, f"mask (L1 {float(mask.sum()):.1f} px)"), (pattern, "pattern"), (mask[None] * pattern, "mask × pattern")]
    for ax, (img, label) in zip(axes, panels):
        arr = _img(img)
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def mask_norms_png(norms: torch.Tensor, scores: torch.Tensor, path: Path, title: str = "", threshold: float = 2.0) -> None:
    """Bar chart of the reversed masks' L1 norms per label, flagged labels in red."""
    fig, ax = plt.subplots(figsize=(5, 2.8), dpi=120)
    colours = ["tab:red" if float(s) > threshold else "tab:blue" for s in scores]
    ax.bar(range(len(norms)), norms.numpy(), color=colours)
    ax.set_xticks(range(len(norms)))
    ax.set_xlabel("label")
    ax.set_ylabel("reversed mask L1 (pixels)")
    ax.set_title(title or "Neural Cleanse: red = anomaly index > threshold", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
