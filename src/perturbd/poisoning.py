"""Choose which training images to poison, apply the trigger, relabel them to the target.

The injection rate is relative to the set the poison is injected into (the whole training set
before training, the update batch when updating): ``n = round(rate × len(set))``. Only images
whose label is not the target (and, if given, is one of the source classes) are eligible.

``poison.mode: clean_label`` (Barni et al. 2019, arXiv 1902.11237) poisons images *of* the target
class instead and keeps every label: the rate is still a fraction of the whole set, the images are
chosen among the target class's, and the attack succeeds when the network ties the trigger to the
class. A trigger's family may add its own extras through its hook
(:meth:`~perturbd.triggers.Trigger.poison_extras`): ``wanet``'s noise mode warps a further
``noise_ratio × n`` images, not poisoned and kept at their own labels (:attr:`PoisonedSet.noise_indices`);
``adap_blend`` triggers ``cover_rate × N`` cover images kept at their labels. A family may also
inject another form of itself than it applies at test time (:meth:`~perturbd.triggers.Trigger.poison_copies`:
Adap-Blend's random patches at its training α).

:func:`poison` does the same to the numpy arrays or torch tensors of another framework, in their
own layout; it is the package's ``perturbd.poison(...)`` (this module is callable).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import torch

from perturbd.config import PoisonConfig, TriggerConfig, validate
from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.errors import ConfigError
from perturbd.limits import check_label_bound, check_seed
from perturbd.metrics import attacked
from perturbd.triggers import Trigger, TriggerContext, build_trigger, needs_model
from perturbd.triggers.static import mask_values


@dataclass(frozen=True)
class PoisonedSet:
    """A training set with some images replaced by triggered copies relabelled to the target.

    Attributes:
        dataset: the poisoned training set (a new object; the clean set is untouched).
        indices: sorted int64 positions of the poisoned images in ``dataset``.
        clean_images: the original images at ``indices`` (uint8), for stealth metrics.
        poisoned_images: the images at ``indices`` as injected.
        original_labels: the labels the poisoned images had before relabelling.
        noise_indices: sorted positions of the images the trigger's ``poison_extras`` changed,
            labels kept (wanet's noise mode, adap_blend's cover images; empty for other triggers).
    """

    dataset: ImageDataset
    indices: torch.Tensor
    clean_images: torch.Tensor
    poisoned_images: torch.Tensor
    original_labels: torch.Tensor
    noise_indices: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    @property
    def injection_rate(self) -> float:
        return len(self.indices) / len(self.dataset)


def check_target(cfg: PoisonConfig, num_classes: int) -> None:
    """Validate the target label and source classes against the data set's classes."""
    if cfg.target >= num_classes:
        raise ConfigError(f"poison.target must be in [0, {num_classes - 1}], got {cfg.target}")
    if cfg.sources != "all":
        bad = [s for s in cfg.sources if not 0 <= s < num_classes]
        if bad:
            raise ConfigError(f"poison.sources must be labels in [0, {num_classes - 1}], got {bad}")
        if cfg.sources == [cfg.target] or not [s for s in cfg.sources if s != cfg.target]:
            raise ConfigError(f"poison.sources {cfg.sources} has no class other than the target {cfg.target}")


def sources_of(cfg: PoisonConfig) -> list[int] | None:
    """The source classes of a source-specific attack; None when every class is a source."""
    return None if cfg.sources == "all" else list(cfg.sources)


def eligible_mask(labels: torch.Tensor, cfg: PoisonConfig) -> torch.Tensor:
    """Boolean mask of images that may be poisoned: not the target, and in the sources (the
    target class's images, for ``mode: clean_label``)."""
    if cfg.mode == "clean_label":
        return labels == cfg.target
    return attacked(labels, cfg.target, sources_of(cfg))


def poison_count(size: int, rate: float) -> int:
    """``round(rate × size)``; the number of images poisoned in a set of ``size``."""
    return round(rate * size)


def choose_indices(labels: torch.Tensor, cfg: PoisonConfig, seed: int) -> torch.Tensor:
    """Seeded choice of ``round(rate × N)`` eligible indices, sorted."""
    count = poison_count(len(labels), cfg.rate)
    if count < 1:
        raise ConfigError(f"poison.rate {cfg.rate} of {len(labels)} images poisons no image; use a rate of at least {1 / len(labels):.2g}")
    candidates = torch.nonzero(eligible_mask(labels, cfg)).flatten()
    if count > len(candidates) and cfg.mode == "clean_label":
        raise ConfigError(
            f"poison.mode clean_label with poison.rate {cfg.rate} asks for {count} poisoned images but only {len(candidates)} "
            f"images are of the target class {cfg.target}; lower poison.rate to at most {len(candidates) / len(labels):.3g}"
        )
    if count > len(candidates):
        raise ConfigError(
            f"poison.rate {cfg.rate} asks for {count} poisoned images but only {len(candidates)} "
            f"images are not of the target class {cfg.target}; lower poison.rate"
        )
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(candidates), generator=gen)[:count]
    return candidates[pick].sort().values


def poison_dataset(data: ImageDataset, trigger: Trigger, cfg: PoisonConfig, seed: int, indices: torch.Tensor | None = None) -> PoisonedSet:
    """Apply ``trigger`` to the chosen images and relabel them to ``cfg.target`` (``mode:
    clean_label``: keep their labels); then the trigger's :meth:`~perturbd.triggers.Trigger.poison_extras`
    (wanet's noise images).

    ``indices``: the positions to poison, already chosen (a run's
    :class:`~perturbd.attack.partition.Partition` chooses them once, after the run checked the
    target: :func:`check_target`); default: :func:`choose_indices`, the target checked first.
    A quantized trigger (:attr:`Trigger.quantize`, from ``poison.quantize``, the default) leaves
    poisoned images uint8, as an image file would; an unquantized one returns the whole set as
    float32 in [0, 1] with the poison not rounded — as the trigger is applied at test time too.
    """
    if trigger.quantize != cfg.quantize:
        raise ConfigError(
            f"poison.quantize is {cfg.quantize} but the trigger is applied with quantize={trigger.quantize}; build it with the same setting"
        )
    if indices is None:
        check_target(cfg, data.num_classes)
        indices = choose_indices(data.labels, cfg, seed)
    clean = data.images[indices]
    images = data.images.clone() if trigger.quantize else to_float01(data.images)
    poisoned = trigger.poison_copies(images[indices], seed)
    images[indices] = poisoned
    labels = data.labels.clone()
    original = labels[indices].clone()
    if cfg.mode == "dirty":
        labels[indices] = cfg.target
    noise = trigger.poison_extras(images, indices, seed)
    out = ImageDataset(images, labels, data.classes, f"{data.name}+poison")
    return PoisonedSet(out, indices, clean, poisoned, original, noise)


# --------------------------------------------------------------------------- arrays of other frameworks

LAYOUTS = ("NHW", "NHWC", "NCHW")


class Poisoned(NamedTuple):
    """What :func:`poison` returns: images and labels in the caller's layout and type, and the
    sorted positions of the poisoned images (numpy for numpy input, torch for torch)."""

    x: Any
    y: Any
    indices: Any


def _layout(shape: tuple[int, ...], layout: str | None) -> str:
    if layout is not None:
        if layout not in LAYOUTS or len(shape) != len(layout):
            raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)} and match x of shape {shape}, got {layout!r}")
        return layout
    if len(shape) == 3:
        return "NHW"
    first, last = len(shape) == 4 and shape[1] in (1, 3), len(shape) == 4 and shape[3] in (1, 3)
    if first != last:
        return "NCHW" if first else "NHWC"
    raise ConfigError(
        f"x must be (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3, got shape {shape}; pass layout= if it is ambiguous"
    )


def _to_nchw(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.unsqueeze(1) if layout == "NHW" else x.permute(0, 3, 1, 2) if layout == "NHWC" else x


def _from_nchw(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x[:, 0] if layout == "NHW" else x.permute(0, 2, 3, 1) if layout == "NHWC" else x


def _as_trigger(
    trigger: Trigger | str | np.ndarray | torch.Tensor,
    shape: tuple[int, int, int],
    seed: int,
    target: int,
    quantize: bool,
    params: dict[str, Any],
) -> Trigger:
    """A :class:`Trigger` from a Trigger, a static kind's name and its parameters, or δ in pixel units."""
    if params and not isinstance(trigger, str):
        raise ConfigError(
            f"trigger parameters {sorted(params)} go with a trigger kind name (e.g. 'grid'), not with a {type(trigger).__name__}"
        )
    if isinstance(trigger, str):
        if needs_model(trigger):
            raise ConfigError(
                f"trigger '{trigger}' is computed from a model; build it with `perturbd trigger make` and pass Trigger.load(FILE)"
            )
        trigger = build_trigger(
            validate({"kind": trigger, **params}, TriggerConfig), TriggerContext(shape, seed, target, quantize=quantize)
        )
    elif isinstance(trigger, (np.ndarray, torch.Tensor)):
        values = trigger.detach().cpu().resolve_conj() if isinstance(trigger, torch.Tensor) else trigger
        if isinstance(values, torch.Tensor):
            values = values.numpy() if values.is_complex() else values.double().numpy()
        values = values.astype(np.uint8) if values.dtype == np.bool_ else values
        delta = torch.from_numpy(mask_values(values, "trigger δ"))
        delta = delta.unsqueeze(0) if delta.ndim == 2 else delta
        if delta.ndim == 3 and delta.shape[-1] in (1, 3) and delta.shape[0] not in (1, 3):
            delta = delta.permute(2, 0, 1)  # (H, W, C) as the caller's channels-last images
        trigger = Trigger(delta, "array")
    elif not isinstance(trigger, Trigger):
        raise ConfigError(f"trigger must be a perturbd Trigger, a trigger kind name or δ as an array, got {type(trigger).__name__}")
    return replace(trigger, info=dict(trigger.info), quantize=quantize)


def poison(
    x: np.ndarray | torch.Tensor,
    y: Any,
    trigger: Trigger | str | np.ndarray | torch.Tensor,
    *,
    rate: float = 0.05,
    target: int = 0,
    seed: int = 0,
    sources: str | list[int] = "all",
    quantize: bool = True,
    mode: str = "dirty",
    layout: str | None = None,
    **params: Any,
) -> Poisoned:
    """Poison images of any framework: ``perturbd.poison(x, y, "grid", amplitude=10, rate=0.05)``.

    The same choice and kernel as a perturbd run (:func:`choose_indices`, :func:`poison_dataset`):
    ``round(rate × N)`` images not of ``target`` (and of ``sources``) chosen with ``seed``,
    triggered (``clip(x + δ)`` for additive kinds) and rounded to uint8, relabelled to ``target``.
    The inputs are left untouched.

    Args:
        x: uint8 pixels 0–255, numpy or torch, ``(N, H, W)``, ``(N, H, W, C)`` or
            ``(N, C, H, W)`` with C = 1 or 3 (``layout``: ``"NHW"``, ``"NHWC"`` or ``"NCHW"``
            where the shape is ambiguous).
        y: ``(N,)`` integer labels (numpy, torch or a sequence).
        trigger: a :class:`~perturbd.triggers.Trigger`; the name of a kind built without a model
            with its ``trigger.*`` settings as keyword arguments (``"grid", amplitude=10``,
            ``"blended", alpha=0.2``, ``"sig"``, ``"wanet"``); or δ in
            pixel units as ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)``.
        quantize: ``False`` adds δ unrounded and returns float32 images, still in 0–255.
        mode: ``"dirty"`` (relabel) or ``"clean_label"`` (poison ``target``'s images, keep labels).

    Returns:
        :class:`Poisoned` ``(x, y, indices)``: x in the layout, array type and device of the
        input; y of y's type and dtype (numpy for a plain sequence); indices sorted, numpy for
        numpy x, torch for torch x.
    """
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise ConfigError(f"x must be a numpy array or a torch tensor of uint8 pixels, got {type(x).__name__}")
    if x.dtype != (np.uint8 if isinstance(x, np.ndarray) else torch.uint8):  # before torch.from_numpy refuses objects
        raise ConfigError(
            f"x must hold uint8 pixels 0–255, got {x.dtype}; convert with (x * 255).round().astype('uint8') if it is in [0, 1]"
        )
    images = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x.detach().cpu()
    order = _layout(tuple(images.shape), layout)
    raw_y = y.detach().cpu() if isinstance(y, torch.Tensor) else np.asarray(y)
    if isinstance(raw_y, np.ndarray) and not np.issubdtype(raw_y.dtype, np.number) and raw_y.dtype != np.bool_:
        raise ConfigError(f"y must hold one integer label per image, shape ({len(images)},), got {raw_y.dtype} of shape {raw_y.shape}")
    labels = torch.as_tensor(raw_y)
    if labels.shape != (len(images),) or not len(images) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ConfigError(
            f"y must hold one integer label per image, shape ({len(images)},), got {labels.dtype} of shape {tuple(labels.shape)}"
        )
    top = int(labels.numpy().max()) if len(labels) and labels.dtype == torch.uint64 else 0  # torch has no uint64 max
    if top > torch.iinfo(torch.int64).max:
        raise ConfigError(f"y holds label {top}, beyond any class count; labels must be 0…K-1")
    labels = labels.long()
    seed = check_seed(seed)
    if len(labels):
        check_label_bound(int(labels.max()), "y")
    cfg = validate({"rate": rate, "target": target, "sources": sources, "quantize": quantize, "mode": mode}, PoisonConfig)
    nchw = _to_nchw(images, order).contiguous()
    classes = max(int(labels.max()) if len(labels) else 0, target) + 1
    data = ImageDataset(nchw, labels, tuple(str(c) for c in range(max(2, classes))), "arrays")
    trig = _as_trigger(trigger, data.image_shape, seed, target, quantize, params)
    done = poison_dataset(data, trig, cfg, seed)
    out = done.dataset.images if quantize else done.dataset.images * 255.0
    out, labels_out = _from_nchw(out, order).contiguous(), done.dataset.labels
    new_y = (
        labels_out.to(y.device, y.dtype)
        if isinstance(y, torch.Tensor)
        else labels_out.numpy().astype(y.dtype if isinstance(y, np.ndarray) else np.int64)
    )
    if isinstance(x, np.ndarray):
        return Poisoned(out.numpy(), new_y, done.indices.numpy())
    return Poisoned(out.to(x.device), new_y, done.indices)
