"""A release verdict on one model: its model-level detectors, a verdict per label, an exit code
(``perturbd.scan``, ``perturbd scan MODEL``).

:func:`scan` fits each detector (a :class:`~perturbd.defenses.ModelInspector`, built from the
defence registry exactly as a run's ``defenses`` list and ``perturbd defend`` build theirs:
:func:`~perturbd.defenses.build_defense`, an unset seed filled from the run seed by
:func:`~perturbd.defenses.base.seed_from_run`) on the model, and reads per label its score, its
threshold, whether it is flagged and the evidence behind the score. The model is flagged when at
least ``fail_on`` detectors flag a label.

Which detectors run by default (:func:`default_detectors`): the model-level detectors that need
no trigger guess and little or no clean data: MM-BD (data-free: it reads no image), and, when the
clean images the model classifies are given, Neural Cleanse as well (it reverse-engineers a
trigger per label from them). A detector is data-free when its ``fit`` takes ``data`` as optional
(``data=None``); one that needs clean images without them is a one-line error.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from perturbd.data.arrays import as_dataset
from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import Defense, Figures, ModelInspector, build_defense, get_defense, seed_from_run
from perturbd.errors import ConfigError
from perturbd.models import Classifier, wrap

#: what :func:`scan` runs without a ``detectors`` list: the data-free ones, then those that read
#: clean images when they are given
DEFAULT_DETECTORS = ("mm_bd", "neural_cleanse")


def data_free(detector: Defense | type[Defense]) -> bool:
    """Whether ``detector`` reads no clean image: its ``fit`` takes ``data`` as optional."""
    fit = getattr(detector, "fit", None)  # every defence has one; the base class declares none
    param = inspect.signature(fit).parameters.get("data") if callable(fit) else None
    return param is not None and param.default is None


def default_detectors(with_data: bool) -> list[str]:
    """:data:`DEFAULT_DETECTORS`, without those that need clean images when none are given."""
    return [n for n in DEFAULT_DETECTORS if with_data or data_free(get_defense(n))]


@dataclass
class DetectorVerdict:
    """One detector's answer: per label ``rows`` (``label``, ``score``, ``flagged`` and the
    detector's evidence of that label), its ``threshold`` on the score, the labels it flags."""

    name: str
    params: dict[str, Any]
    threshold: float
    flagged_labels: list[int]
    rows: list[dict[str, Any]]
    seconds: float
    clean_used: int
    facts: dict[str, Any] = field(default_factory=dict)
    figures: Figures = field(default_factory=dict)

    @property
    def flagged(self) -> bool:
        return bool(self.flagged_labels)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "params": self.params, "flagged": self.flagged, "flagged_labels": self.flagged_labels,
            "threshold": self.threshold, "seconds": round(self.seconds, 3), "clean_images_used": self.clean_used,
            "facts": self.facts, "labels": self.rows, "figures": sorted(self.figures),
        }  # fmt: skip


@dataclass
class ScanResult:
    """The verdicts of :func:`scan`: ``flagged`` when at least ``fail_on`` detectors flag a
    label; ``exit_code`` 1 then, else 0 (what ``perturbd scan`` exits with)."""

    detectors: list[DetectorVerdict]
    fail_on: int
    num_classes: int
    image_shape: tuple[int, ...]
    seed: int

    @property
    def flagging(self) -> list[str]:
        """The detectors that flag a label."""
        return [d.name for d in self.detectors if d.flagged]

    @property
    def flagged(self) -> bool:
        return len(self.flagging) >= self.fail_on

    @property
    def exit_code(self) -> int:
        return 1 if self.flagged else 0

    @property
    def suspected_labels(self) -> list[int]:
        """Every label some detector flags, sorted."""
        return sorted({lab for d in self.detectors for lab in d.flagged_labels})

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": "flagged" if self.flagged else "clean", "exit_code": self.exit_code, "fail_on": self.fail_on,
            "flagging_detectors": self.flagging, "suspected_labels": self.suspected_labels, "num_classes": self.num_classes,
            "image_shape": list(self.image_shape), "seed": self.seed, "detectors": [d.to_json() for d in self.detectors],
        }  # fmt: skip


def build_detectors(names: Sequence[str], params: dict[str, dict[str, Any]] | None = None, *, with_data: bool) -> list[Defense]:
    """Build the detectors ``names`` (each with its ``params``) and check, before any work, that
    each is a model-level detector and that each needing clean images gets them."""
    built = [build_defense(n, **(params or {}).get(n, {})) for n in names]
    return [_checked(d, with_data) for d in built]


def _checked(d: Defense, with_data: bool) -> Defense:
    if d.kind != "model":
        raise ConfigError(f"scan runs model-level detectors, and '{d.name}' is a {d.kind} defence; see `perturbd defenses` for kind model")
    if not with_data and not data_free(d):
        raise ConfigError(f"detector '{d.name}' reverse-engineers triggers from clean images: give the data the model classifies (--data)")
    return d


def scan(
    model: nn.Module,
    data: Any = None,
    detectors: Sequence[str | Defense] | None = None,
    fail_on: int = 1,
    *,
    seed: int = 0,
    params: dict[str, dict[str, Any]] | None = None,
) -> ScanResult:
    """Run model-level detectors on ``model``; a verdict per detector and label, and one in all.

    Args:
        model: a perturbd model (:func:`~perturbd.models.wrap`, a run's model) or a plain
            ``nn.Module`` taking float images in [0, 1], which is wrapped for the data's image
            shape (without data, wrap it yourself: ``perturbd.wrap(net, (3, 32, 32))``).
        data: clean images the model classifies, with labels: an
            :class:`~perturbd.data.ImageDataset` or ``(images, labels)`` (arrays as
            :func:`~perturbd.data.arrays.as_dataset` takes them); None: only data-free detectors.
        detectors: registered names or built detectors, all of kind ``model``; None:
            :func:`default_detectors`.
        fail_on: how many detectors must flag a label for the model to be flagged (1 ≤ fail_on ≤
            the number of detectors).
        seed: the run seed an unset ``seed`` of each detector is derived from.
        params: per detector name, its parameters (for names in ``detectors``).

    Returns:
        :class:`ScanResult` (``flagged``, ``exit_code``, per detector ``rows`` and figures).

    Raises:
        ConfigError, DataError: one line, before any detector runs.

    Example:
        >>> import perturbd, torch
        >>> net = perturbd.wrap(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)), (1, 4, 4))
        >>> perturbd.scan(net, detectors=["mm_bd"], params={"mm_bd": {"steps": 2, "starts": 2}}).exit_code in (0, 1)
        True
    """
    net, dataset = _model_and_data(model, data)
    chosen = list(detectors) if detectors is not None else default_detectors(dataset is not None)
    given = [d for d in chosen if isinstance(d, Defense)]
    if given and params:
        raise ConfigError("scan() got built detectors and params; give the parameters when building them")
    built = [_checked(d, dataset is not None) if isinstance(d, Defense) else d for d in chosen]
    names = [d for d in built if isinstance(d, str)]
    by_name = dict(zip(names, build_detectors(names, params, with_data=dataset is not None), strict=True))
    unknown = set(params or {}) - set(names)
    if unknown:
        raise ConfigError(f"scan() got params for {sorted(unknown)}, which are not among its detectors {names}")
    ready = [by_name[d] if isinstance(d, str) else d for d in built]
    if not ready:
        raise ConfigError("scan needs at least one detector")
    if len({d.name for d in ready}) < len(ready):
        raise ConfigError(f"scan got a detector twice: {[d.name for d in ready]}; give each once")
    if isinstance(fail_on, bool) or not isinstance(fail_on, int) or not 1 <= fail_on <= len(ready):
        raise ConfigError(f"fail_on must be in [1, {len(ready)}] (the number of detectors), got {fail_on!r}")
    for d in ready:
        seed_from_run(d, seed)
    verdicts = [_verdict(d.fit(net, dataset)) for d in ready]
    return ScanResult(verdicts, fail_on, net.num_classes, tuple(net.image_shape), seed)


def _model_and_data(model: nn.Module, data: Any) -> tuple[Classifier, ImageDataset | None]:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module (or perturbd.wrap(...) of one), got {type(model).__name__}")
    dataset: ImageDataset | None
    if data is None or isinstance(data, ImageDataset):
        dataset = data
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        num_classes = model.num_classes if isinstance(model, Classifier) else None
        dataset = as_dataset(data[0], data[1], num_classes=num_classes)
    else:
        raise ConfigError("data must be an ImageDataset, (images, labels), or None for the data-free detectors")
    if isinstance(model, Classifier):
        net = model
    elif dataset is None:
        raise ConfigError("a plain nn.Module states no image shape: wrap it (perturbd.wrap(net, image_shape)) or give data")
    else:
        net = wrap(model, dataset.image_shape)
    if dataset is not None and dataset.image_shape != net.image_shape:
        raise ConfigError(f"the data's images are {dataset.image_shape} (C, H, W) but the model takes {net.image_shape}")
    return net, dataset


def _verdict(d: ModelInspector) -> DetectorVerdict:
    flagged = [bool(v) for v in d.flagged_]
    rows = [
        {"label": k, "score": round(float(d.scores_[k]), 4), "flagged": flagged[k], **{key: v[k] for key, v in d.evidence_.items()}}
        for k in range(len(flagged))
    ]
    params = d.get_params() if isinstance(d, Defense) else {}
    facts = dict(getattr(d, "facts_", {}))
    return DetectorVerdict(
        d.name, params, float(d.anomaly_threshold), list(d.flagged_labels_), rows, d.seconds_, d.clean_used_, facts, d.figures()
    )
