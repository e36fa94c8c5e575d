"""SPECTRE (Hayase, Kong, Somani and Oh, ICML 2021): dataset screening with robust statistics.

Per training label, the penultimate representations are reduced by PCA, *whitened* with a
covariance estimated robustly (so that the poison does not hide in it), and each sample scored by
QUantum Entropy (QUE): ``x̃ᵀ M x̃`` with ``M ∝ exp(α (Σ̃ − I) / (‖Σ̃‖ − 1))``, ``Σ̃`` the covariance
of the whitened representations ``x̃``. Whitening by the clean covariance makes a poison direction
stand out even when it is weak beside the clean data's own spread, where a spectral signature's
top singular vector misses it; QUE weighs every direction of excess variance, not only the top one.

As the authors' code (SewoongLab/spectre-defense @ 15da18b7: ``quantum_filters.jl``,
``dkk17.jl``, ``util.jl``) does, per class of ``n`` images with ``m`` expected poisons:

- PCA to ``k`` dimensions (the representations centred by their mean);
- **robust covariance** (``cov_estimation_iterate``: Diakonikolas, Kamath, Kane, Li, Moitra and
  Stewart's filter, ICML 2017), repeated on the samples kept: with ``Σ = SᵀS / n`` and
  ``y = Σ^{-1/2} x``, remove every sample with ``‖y‖² ≥ 10 k log(n / τ)``; else take the top
  eigenvector V of the fourth-moment operator ``V ↦ mean((yᵀVy) yyᵀ) − tr(V) I``: when its
  eigenvalue is at most ``1 + 10 ε log(1/ε)²`` (ε = m / n) the covariance is accepted; else
  remove the samples whose ``|(yᵀVy − tr V)/√2 − median|`` lies beyond the authors' tail bound
  (shift 3, ``cov_Tail``); at most ``2 m`` samples removed in all (``limit1 = 2``);
- whiten by the covariance of the samples kept, score QUE with α = 4 (for ``k = 1``: no
  whitening, the squared projection on the top principal component) and remove the ``1.5 m``
  highest (``limit2 = 1.5``);
- ``k`` chosen automatically (``rcov_auto_quantum_filter``): for each ``k`` of
  ``round(linspace(1, √100, 10)²)`` = 1, 4, 9, …, 100, whiten the 100-dimensional PCA by the
  covariance of the samples ``k``'s QUE step kept, and keep the ``k`` whose whitened covariance has the
  largest ``tr(Σ̃ M) / tr M``.

Where perturbd departs from it:

- **every class**: the authors run the filter on the target class only, with the true number of
  poisons; this runs it on each label with ``m = round(epsilon × n)``, ε an upper bound on the
  poisoned share of a class (as :mod:`spectral_signature`; ``epsilon_source="oracle"`` sets it
  to the run's true share of the target), and removes ``round(multiplier × m)`` per class;
- **dimensions capped**: the PCA has ``min(max_dims, rank, n − 2m − 1)`` dimensions, so that the
  kept samples' covariance is invertible (the authors assert ``k ≤ min(d, n)``); the grid of ``k``
  is cut there;
- **the fourth-moment eigenvector** by at most 50 Lanczos steps (full reorthogonalisation, no
  restart, from the all-ones vector as KrylovKit's ``eigsolve`` there) on the d²-dimensional
  operator, never formed; its top eigenvalues are nearly equal on clean data, where this stops
  short of KrylovKit's 1e-12 tolerance;
- **cost**: a filter step is ``O(n k²)`` per Lanczos step and the filter can take tens of steps
  at the larger ``k``: on the CPU a class of thousands of images with ``max_dims = 100`` takes
  minutes (set torch's threads to the cores: oversubscribed threads are far slower); the
  statistics run in float64 on the model's device;
- **no excess variance** (``‖Σ̃‖ ≤ 1``, where the authors' ``M`` divides by zero): ``M = I / k``;
- median of an even count: the mean of the two middle values (Julia's); the ``k`` lowest by rank,
  not by a cut value (ties).

``scores_`` are the QUE scores of the chosen ``k`` divided by the class's median (so scores of
different classes compare for one global AUROC); ``flagged_`` marks the removed samples;
``dims_`` is the ``k`` chosen per class (0 for a class left unscored: fewer than 2 images or
identical representations).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
from pydantic import Field

from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import Defense, ShareBoundParams, penultimate, register_defense, require_features
from perturbd.models import model_device
from perturbd.progress import stage

C = 10.0  # the constant of the authors' filter (dkk17.jl: C = 10)
SHIFT = 3.0  # the shift of the authors' tail test


def pca(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` ``(n, d)`` centred by its mean and projected on its top ``k`` principal directions."""
    centred = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    out: torch.Tensor = centred @ vh[:k].T
    return out


def inv_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """``Σ^{-1/2}`` of a symmetric positive semi-definite matrix (eigenvalues floored at 1e-12 × the largest)."""
    w, v = torch.linalg.eigh(sigma)
    w = w.clamp_min(1e-12 * max(float(w.max()), 1e-300))
    out: torch.Tensor = (v * w.rsqrt()) @ v.T
    return out


def cov(x: torch.Tensor, corrected: bool) -> torch.Tensor:
    """Covariance of the rows of ``x`` (divided by ``n − 1`` when ``corrected``, else ``n``)."""
    c = x - x.mean(0, keepdim=True)
    out: torch.Tensor = c.T @ c / (len(x) - 1 if corrected else len(x))
    return out


def lowest(values: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask of the ``count`` lowest ``values``."""
    out = torch.zeros(len(values), dtype=torch.bool, device=values.device)
    out[torch.argsort(values, stable=True)[: max(0, count)]] = True
    return out


def top_eigenpair(
    op: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, steps: int = 50, tol: float = 1e-10
) -> tuple[float, torch.Tensor]:
    """Largest eigenvalue and its unit eigenvector of the symmetric operator ``op`` by Lanczos with
    full reorthogonalisation, from ``start``; stops when the Ritz residual is below ``tol``."""
    q = start / start.norm()
    basis: list[torch.Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    theta, s = 0.0, torch.ones(1, dtype=start.dtype)
    for _ in range(min(steps, len(start))):
        basis.append(q)
        w = op(q)
        alphas.append(float(w @ q))
        q_all = torch.stack(basis)
        w = w - q_all.T @ (q_all @ w)
        w = w - q_all.T @ (q_all @ w)  # twice is enough (Kahan–Parlett)
        beta = float(w.norm())
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(t)  # the small tridiagonal problem, on the CPU
        vectors = vectors.to(start)
        theta, s = float(values[-1]), vectors[:, -1]
        if beta * abs(float(s[-1])) <= tol * max(1.0, abs(theta)):
            break
        betas.append(beta)
        q = w / beta
    x = torch.stack(basis).T @ s
    return theta, x / x.norm()


def fourth_moment_direction(y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Top eigenpair of ``V ↦ mean_i((y_iᵀ V y_i) y_i y_iᵀ) − tr(V) I`` over ``d × d`` matrices
    (the authors' ``TS′ = Z Zᵀ / n − vec(I) vec(I)ᵀ``): the eigenvalue and V symmetrised."""
    n, d = y.shape
    eye = torch.eye(d, dtype=y.dtype, device=y.device)

    def op(v: torch.Tensor) -> torch.Tensor:
        m = v.view(d, d)
        w = ((y @ m) * y).sum(1)
        return ((y * w[:, None]).T @ y / n - torch.trace(m) * eye).flatten()

    value, vec = top_eigenpair(op, torch.ones(d * d, dtype=y.dtype, device=y.device))
    m = vec.view(d, d)
    return value, (m + m.T) / 2


def cov_tail(t: float, eps: float) -> float:
    """The authors' tail bound (``cov_Tail``): 1 up to ``10 log(1/ε)``, then ``3ε / (t log t)²``."""
    return 1.0 if t <= 10 * math.log(1 / eps) else 3 * eps / (t * math.log(t)) ** 2


def filter_step(s: torch.Tensor, eps: float, tau: float, limit: int) -> torch.Tensor | None:
    """One step of the robust covariance filter on ``s`` ``(n, d)``: the samples kept (at most
    ``limit`` removed), or None when it stops (the covariance passes, or nothing can be removed)."""
    n, d = s.shape
    y = s @ inv_sqrt(s.T @ s / n)
    norms = (y * y).sum(1)
    far = norms >= C * d * math.log(n / tau)
    if far.any():
        return ~far | lowest(norms, n - limit)
    value, v = fourth_moment_direction(y)
    if value <= 1 + C * eps * math.log(1 / eps) ** 2:
        return None
    ps = (((y @ v) * y).sum(1) - torch.trace(v)) / math.sqrt(2)
    diffs = (ps - torch.quantile(ps, 0.5)).abs()
    for i, diff in enumerate(sorted(diffs.tolist()), start=1):
        t = diff - SHIFT
        if t > 0 and i / n >= cov_tail(t, eps):
            keep: torch.Tensor = (diffs <= t) | lowest(diffs, n - limit)
            return keep
    return None


def robust_selection(s: torch.Tensor, eps: float, tau: float, limit: int) -> torch.Tensor:
    """The samples of ``s`` the filter keeps (bool ``(n,)``), steps repeated on what is kept
    until it stops or ``limit`` samples are removed (``cov_estimation_iterate``)."""
    kept = torch.arange(len(s), device=s.device)
    while limit > 0:
        keep = filter_step(s[kept], eps, tau, limit)
        if keep is None or bool(keep.all()):
            break
        limit -= int((~keep).sum())
        kept = kept[keep]
    out = torch.zeros(len(s), dtype=torch.bool, device=s.device)
    out[kept] = True
    return out


def que_matrix(sigma: torch.Tensor, alpha: float) -> torch.Tensor:
    """``M = exp(α (Σ̃ − I) / (‖Σ̃‖ − 1)) / tr(…)``; ``I / k`` when ``‖Σ̃‖ ≤ 1`` (no excess variance)."""
    k = len(sigma)
    eye = torch.eye(k, dtype=sigma.dtype, device=sigma.device)
    excess = float(torch.linalg.eigvalsh(sigma)[-1]) - 1
    if excess <= 1e-12:
        return eye / k
    m = torch.linalg.matrix_exp(alpha * (sigma - eye) / excess)
    out: torch.Tensor = m / torch.trace(m)
    return out


def quantum_filter(x: torch.Tensor, k: int, poisons: int, p: Spectre) -> tuple[torch.Tensor, torch.Tensor]:
    """``rcov_quantum_filter`` on the first ``k`` principal components of ``x``: (QUE scores,
    the ``round(multiplier × poisons)`` highest as removed)."""
    xk = x[:, :k]
    if k == 1:
        scores = xk[:, 0] ** 2
    else:
        keep = robust_selection(xk, poisons / len(x), p.tau, round(p.filter_limit * poisons))
        white = xk @ inv_sqrt(cov(xk[keep], corrected=False))
        scores = ((white @ que_matrix(cov(white, corrected=True), p.alpha)) * white).sum(1)
    return scores, ~lowest(scores, len(x) - round(p.multiplier * poisons))


def dims_grid(max_dims: int) -> list[int]:
    """The authors' grid of ``k``: ``round(linspace(1, √max_dims, 10)²)`` (1, 4, 9, …, 100), distinct."""
    return sorted({round(float(r) ** 2) for r in torch.linspace(1, math.sqrt(max_dims), 10, dtype=torch.float64)})


def class_spectre(feats: torch.Tensor, poisons: int, p: Spectre) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One class's ``(scores, removed, k)`` (``rcov_auto_quantum_filter``); ``k = 0``, zero
    scores and nothing removed when it cannot be scored."""
    n = len(feats)
    centred = feats - feats.mean(0, keepdim=True)
    sv = torch.linalg.svdvals(centred) if n > 1 else torch.zeros(1, dtype=feats.dtype, device=feats.device)
    rank = int((sv > 1e-9 * max(float(sv[0]), 1e-300)).sum()) if float(sv[0]) > 0 else 0
    top = min(p.max_dims, rank, n - round(p.filter_limit * poisons) - 1)
    if top < 1:
        return torch.zeros(n, dtype=feats.dtype, device=feats.device), torch.zeros(n, dtype=torch.bool, device=feats.device), 0
    x = pca(feats, top)
    tried = []
    for k in [k for k in dims_grid(p.max_dims) if k <= top]:
        scores, removed = quantum_filter(x, k, poisons, p)
        sigma = cov(x @ inv_sqrt(cov(x[~removed], corrected=True)), corrected=True)
        m = que_matrix(sigma, p.alpha)
        tried.append((float(torch.trace(sigma @ m) / torch.trace(m)), scores, removed, k))
    _, scores, removed, k = max(tried, key=lambda t: t[0])  # the first of equals, as the authors' strict >
    return scores, removed, k


@register_defense
class Spectre(Defense):
    name = "spectre"
    kind = "dataset"

    class Params(ShareBoundParams):
        multiplier: float = Field(1.5, gt=0, le=10, description="remove multiplier × expected poisons per class (the authors: 1.5)")
        filter_limit: float = Field(
            2.0, gt=0, le=10, description="the robust covariance filter removes at most this × expected poisons (the authors: 2)"
        )
        alpha: float = Field(4.0, gt=0, le=100, description="QUE's α, the weight of the largest directions (the authors: 4)")
        tau: float = Field(0.1, gt=0, lt=1, description="confidence parameter τ of the robust covariance filter (the authors: 0.1)")
        max_dims: int = Field(100, ge=1, le=1024, description="largest PCA dimension k tried (the authors: 100)")
        batch_size: int = Field(512, ge=1, le=65536, description="images per forward pass")

    def fit(self, model: nn.Module, data: ImageDataset) -> Spectre:
        """Score every image of ``data`` (the training set as trained on, labels as given)."""
        require_features(model, self.name)
        # the statistics in float64 on the model's GPU (quick for large classes), else on the CPU
        device = model_device(model) if model_device(model).type == "cuda" else torch.device("cpu")
        feats = penultimate(model, data.images, self.batch_size).to(device, torch.float64)
        scores = torch.zeros(len(data), dtype=torch.float64)
        flagged = torch.zeros(len(data), dtype=torch.bool)
        self.dims_ = [0] * data.num_classes
        with stage(f"{self.name} classes", data.num_classes) as progress:
            for c in progress.over(range(data.num_classes)):
                idx = torch.nonzero(data.labels == c).flatten()
                if len(idx) < 2:
                    continue
                s, removed, self.dims_[c] = class_spectre(feats[idx.to(feats.device)], round(self.epsilon * len(idx)), self)
                scores[idx] = (s / s.median().clamp_min(1e-12)).cpu()
                flagged[idx] = removed.cpu()
        self.scores_ = scores.float()
        self.flagged_ = flagged
        return self
