"""Activation clustering (Chen et al., 2018): dataset screening.

Per training label, the penultimate features are reduced to ``components`` dimensions and split
by k-means into two clusters. A backdoored class splits into its genuine images and the poisoned
ones, which form the *smaller* cluster; a clean class splits into two halves of natural
variation. A class is poisoned when its smaller cluster holds at most ``size_threshold`` of it
and the split's silhouette is at least ``silhouette_threshold``; its smaller cluster is then
flagged.

Defaults are the paper's: FastICA to 10 dimensions (``reduction="ica"``, ``components=10``),
2-means, and the relative-size and silhouette analyses. Chen et al. give no thresholds for those
analyses; ``size_threshold = 0.35`` and ``silhouette_threshold = 0.1`` are those of ART (v1.20.1,
``activation_defence.py``), the reference implementation (size < 0.35 and silhouette > 0.1 there,
≤ and ≥ here). ART defaults its class to ``reduce="PCA"`` (its module functions to
``FastICA(max_iter=1000, tol=0.005)``), both without a seed; here the reduction and k-means draw
from ``seed``, so a run is reproducible, and FastICA runs at most 400 iterations.

``reduction="pca"`` is a variant, reported under its own name in a config (``{name:
activation_clustering, label: activation_clustering_pca, params: {reduction: pca}}``). Which
reduction finds the poison depends on the data: on full MNIST (cnn28, 1 % BadNets patch) PCA's
split follows natural variation and misses the poison where ICA isolates it
(experiments/README.md); on a few hundred images per class ICA's components are noisy and it
flags clean classes too, and on full MNIST its AUROC swung with its seed alone. A reduction
chosen for a study is chosen on other seeds than it is scored on (experiments/tune_defenses.py).

``scores_`` (for AUROC): ``silhouette × (1 − small share) × tanh(margin / σ)``, where ``margin`` is
how much closer a sample is to the small cluster's centre than to the large one's (σ: the
class's margin spread) — high for members of a small, well separated cluster.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import Field

from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import Defense, DefenseParams, penultimate, register_defense, require_features
from perturbd.progress import stage


@register_defense
class ActivationClustering(Defense):
    name = "activation_clustering"
    kind = "dataset"

    class Params(DefenseParams):
        reduction: Literal["ica", "pca"] = Field(
            "ica", description="dimension reduction before k-means: ica (the paper's), or pca (a variant)"
        )
        components: int = Field(10, ge=1, le=512, description="dimensions kept")
        size_threshold: float = Field(0.35, gt=0, le=0.5, description="a smaller cluster holding at most this share of its class is poison")
        silhouette_threshold: float = Field(0.1, ge=-1, le=1, description="and the 2-means split must be at least this clear")
        batch_size: int = Field(512, ge=1, le=65536, description="images per forward pass")
        seed: int | None = Field(None, ge=0, description="seeds the reduction and k-means (None: derived from the run seed)")

    def fit(self, model: nn.Module, data: ImageDataset) -> ActivationClustering:
        """Cluster every class of ``data`` (the training set as trained on, labels as given)."""
        # scikit-learn loads here, not at the top: a run without this defence never pays its CPU
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA, FastICA
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.metrics import silhouette_score
        from threadpoolctl import threadpool_limits

        require_features(model, self.name)
        feats = penultimate(model, data.images, self.batch_size).double().numpy()
        seed = self.rng_seed() % 2**32  # scikit-learn takes 32-bit seeds
        scores = np.zeros(len(data))
        flagged = np.zeros(len(data), dtype=bool)
        self.class_report_: dict[int, dict[str, float]] = {}
        with stage(f"{self.name} classes", data.num_classes) as progress:
            for c in progress.over(range(data.num_classes)):
                idx = np.flatnonzero(data.labels.numpy() == c)
                if len(idx) < 4:
                    continue
                x = feats[idx] - feats[idx].mean(0)
                dims = max(1, min(self.components, x.shape[1], len(idx) - 1))
                with warnings.catch_warnings(), threadpool_limits(1):  # tiny problems: threads only contend
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    reducer = FastICA(dims, random_state=seed, max_iter=400) if self.reduction == "ica" else PCA(dims, random_state=seed)
                    z = reducer.fit_transform(x)
                    km = KMeans(2, n_init=4, random_state=seed).fit(z)
                assign = km.labels_
                sizes = np.bincount(assign, minlength=2)
                if sizes.min() == 0:
                    continue
                small = int(np.argmin(sizes))
                share = sizes[small] / len(idx)
                with threadpool_limits(1):
                    sil = float(silhouette_score(z, assign, sample_size=min(len(idx), 2000), random_state=seed))
                dist = np.linalg.norm(z[:, None, :] - km.cluster_centers_[None], axis=2)
                margin = dist[:, 1 - small] - dist[:, small]
                spread = margin.std() or 1.0
                scores[idx] = max(sil, 0.0) * (1 - share) * np.tanh(margin / spread)
                poisoned = share <= self.size_threshold and sil >= self.silhouette_threshold
                if poisoned:
                    flagged[idx[assign == small]] = True
                self.class_report_[c] = {"small_share": float(share), "silhouette": sil, "flagged": bool(poisoned)}
        self.scores_ = torch.from_numpy(scores).float()
        self.flagged_ = torch.from_numpy(flagged)
        return self
