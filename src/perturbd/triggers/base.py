"""Triggers: functions of the image, with an additive perturbation mask δ as the fast path.

A trigger maps a batch of images to their poisoned copies. The *additive* family (every static
mask, the adaptive mask, ``sig``) is ``x' = clip(x + δ)`` and runs through :func:`add_delta`;
other families (``blended``, ``wanet``, the wrapped ``sig_wrap`` and ``sig_ramp_wrap``) subclass
:class:`Trigger`, override :meth:`Trigger.transform` (float images in [0, 1] to float images) and
run through :func:`transform_images`, which rounds their uint8 output to whole grey levels (round
half to even), as writing a PNG would.

δ is held as float32 ``(C, H, W)`` in pixel units of the 0–255 scale (a 1-channel δ is broadcast
over colour channels). Applying it is ``x' = clip(x + δ)``:

- uint8 images: δ is rounded to whole pixel values (round half to even) and added in int16, then
  clamped to 0–255. Because ``x`` is integral, this equals rounding ``clip(x + δ)`` to uint8, the
  same as writing a PNG. Clipping only shrinks ``|x' − x|``, so any norm bound on ``round(δ)``
  holds for every poisoned image.
- float images in [0, 1]: ``δ / 255`` is added and the result clamped to [0, 1]; no rounding.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from perturbd.data.dataset import to_float01, to_pixels
from perturbd.errors import CheckpointError, ConfigError
from perturbd.seeding import complement, derived_generator
from perturbd.tensorfile import save_tensors
from perturbd.trigger_params import KINDS, Kind, TriggerParams, register_params

if TYPE_CHECKING:
    from perturbd.config import TriggerConfig
    from perturbd.data.dataset import ImageDataset


def add_delta(images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Return ``clip(images + delta)`` in the dtype of ``images`` (see the module docstring).

    Args:
        images: ``(N, C, H, W)`` uint8 in 0–255 or float in [0, 1]. Left untouched.
        delta: ``(C, H, W)`` or ``(1, H, W)``, pixel units 0–255.
    """
    if images.shape[-2:] != delta.shape[-2:] or delta.shape[0] not in (1, images.shape[1]):
        raise ConfigError(
            f"trigger of shape {tuple(delta.shape)} does not fit images of shape "
            f"{tuple(images.shape[1:])}; build the trigger for this data set"
        )
    delta = delta.to(images.device)
    if images.dtype == torch.uint8:
        step = torch.round(delta.clamp(-255.0, 255.0)).to(torch.int16)  # beyond ±255 every pixel saturates alike
        return (images.to(torch.int16) + step).clamp_(0, 255).to(torch.uint8)
    if images.is_floating_point():
        return (images + delta.to(images.dtype) / 255.0).clamp_(0.0, 1.0)
    raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")


def transform_images(images: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn`` (float images in [0, 1] to float images) to uint8 or float ``images``.

    uint8 images are converted to float32 in [0, 1], transformed, clamped and rounded to whole grey
    levels (round half to even); float images are transformed and clamped to [0, 1], unrounded.
    The input is left untouched."""
    if images.dtype == torch.uint8:
        out = fn(images.float() / 255.0).clamp_(0.0, 1.0)
        return torch.round(out * 255.0).to(torch.uint8)
    if images.is_floating_point():
        return fn(images).clamp_(0.0, 1.0)
    raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")


@dataclass
class Trigger:
    """A trigger: a function of the image, how it is applied and how it was made.

    The base class is the additive mask ``x' = clip(x + δ)``; non-additive families subclass it,
    override :meth:`transform` and set :attr:`family`, and keep their defining tensor in ``delta``.
    Code that needs an additive δ asks :meth:`mask`, which refuses them. What ``delta`` holds, per
    family (the one place this is written):

    ========== ================================================================================
    family     ``delta``, float32
    ========== ================================================================================
    additive   δ, ``(C, H, W)`` or ``(1, H, W)``, pixel units 0–255: ``x' = clip(x + δ)``
    blend      the key pattern p, same shape and units: ``x' = (1 − α)·x + α·p`` (:class:`~perturbd.triggers.blended.Blend`)
    wrap       δ as for additive, added modulo 256 (:class:`~perturbd.triggers.sig.Wrapped`)
    warp       the sampling grid, ``(2, H, W)`` (x then y, grid units [−1, 1]) (:class:`~perturbd.triggers.wanet.Warp`)
    squeeze    the colour levels of each pixel, ``(1, H, W)`` (:class:`~perturbd.triggers.bpp.Squeeze`)
    adapblend  the key pattern p, as blend (:class:`~perturbd.triggers.adap_blend.AdaptiveBlend`)
    ========== ================================================================================

    Attributes:
        delta: float32 tensor: the family's tensor (table above).
        kind: the registry name that built it.
        info: JSON-serialisable facts about it (amplitude, budget, fooling rate, …).
        quantize: applied as a shipped image file would carry it (default): uint8 images stay
            uint8 and δ is rounded to whole grey levels. ``False`` (``poison.quantize: false``):
            images are converted to float in [0, 1] and δ added unrounded — in training and in
            testing alike, so a trigger is applied one way wherever it is applied.
    """

    delta: torch.Tensor
    kind: str
    info: dict[str, Any] = field(default_factory=dict)
    quantize: bool = True
    family: ClassVar[str] = "additive"

    @property
    def additive(self) -> bool:
        """Whether the trigger is ``x' = clip(x + δ)`` with one δ for every image."""
        return self.family == "additive"

    def mask(self) -> torch.Tensor:
        """The additive δ (pixel units 0–255); a :class:`ConfigError` for other families."""
        if not self.additive:
            raise ConfigError(
                f"trigger '{self.kind}' ({self.family}) is a function of the image, not an additive mask; this needs an additive kind"
            )
        return self.delta

    def params(self) -> dict[str, Any]:
        """The family's scalar settings beside ``delta`` (saved in the metadata; none for additive)."""
        return {}

    def poison_copies(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """The triggered copies of ``images`` that a poisoned training set holds: :meth:`apply` by
        default; a family whose training form differs from its test form overrides it (Adap-Blend's
        random patches; Narcissus's :class:`~perturbd.triggers.narcissus.Magnified`, stronger at
        test time only). What poisoning writes and the ``trigger.psnr`` / ``trigger.ssim`` search
        measures. Same seed ⇒ same copies."""
        return self.apply(images)

    def poison_extras(self, images: torch.Tensor, poisoned: torch.Tensor, seed: int) -> torch.Tensor:
        """The family's own extras to a training set once its ``poisoned`` positions (sorted)
        hold their triggered copies: change more of ``images`` (the whole set, modified in place,
        uint8 or float as poisoned) and return their sorted positions, whose labels stay as they
        are. None by default; WaNet's noise mode warps other images
        (:meth:`~perturbd.triggers.wanet.Warp.poison_extras`), Adap-Blend triggers cover images
        (:meth:`~perturbd.triggers.adap_blend.AdaptiveBlend.poison_extras`). Same seed ⇒ same images."""
        return torch.zeros(0, dtype=torch.long)

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] to their triggered copies (before clamping); non-additive families override it."""
        return images + self.delta.to(images.device, images.dtype) / 255.0

    def __post_init__(self) -> None:
        if not isinstance(self.delta, torch.Tensor):
            raise ConfigError(f"a trigger mask must be a torch tensor, got {type(self.delta).__name__}; pass torch.as_tensor(delta)")
        if self.delta.ndim != 3:
            raise ConfigError(f"a trigger mask must be (C, H, W), got shape {tuple(self.delta.shape)}")
        if self.delta.is_complex():
            raise ConfigError(f"a trigger mask must hold real values, got {self.delta.dtype}")
        if not torch.isfinite(self.delta).all():
            raise ConfigError("a trigger mask must hold finite values; got NaN or inf")
        self.delta = self.delta.detach().to("cpu", torch.float32).contiguous()

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The triggered copies of a batch of images (uint8 or float in [0, 1]); the input is untouched.

        Unquantized triggers (``quantize=False``) return float images, uint8 input included."""
        if not self.quantize and images.dtype == torch.uint8:
            images = to_float01(images)
        if self.additive:
            return add_delta(images, self.delta)
        self.check_fits(images)
        return transform_images(images, self.transform)

    def check_fits(self, images: torch.Tensor) -> None:
        """A one-line :class:`ConfigError` unless ``images`` have the height and width it was built for."""
        if images.shape[-2:] != self.delta.shape[-2:]:
            raise ConfigError(
                f"trigger '{self.kind}' was built for {tuple(self.delta.shape[-2:])} images, got {tuple(images.shape[-2:])}; "
                "build it for this data set"
            )

    def preview(self, images: torch.Tensor | None = None) -> torch.Tensor:
        """What ``trigger.png`` shows, ``(C, H, W)`` pixel units: δ of an additive trigger; for
        other families the mean of ``x' − x`` over ``images`` (what the trigger did to them)."""
        if self.additive:
            return self.delta
        if images is None or not len(images):
            raise ConfigError(f"trigger '{self.kind}' changes each image differently; its picture needs sample images")
        return (to_pixels(self.apply(images)) - to_pixels(images)).mean(0).float()

    def applied(self, channels: int | None = None) -> torch.Tensor:
        """δ as it is added to an image of ``channels`` channels (default: δ's own): a 1-channel
        mask broadcast over colour, rounded to whole grey levels when quantized."""
        delta = torch.round(self.mask()) if self.quantize else self.mask()
        channels = channels or delta.shape[0]
        return delta.expand(channels, *delta.shape[1:]) if delta.shape[0] == 1 else delta

    def norms(self, channels: int | None = None, images: torch.Tensor | None = None) -> dict[str, float]:
        """L∞ and L2 (over all pixels and channels) of the mask as applied to images of
        ``channels`` channels (:meth:`applied`), pixel units: a bound on every poisoned image.

        A non-additive trigger has no one δ: its norms are the largest ``x' − x`` over ``images``
        (uint8 or float, as applied, rounded when quantized), measured; without images, an error."""
        if self.additive:
            applied = self.applied(channels)
            return {"linf": float(applied.abs().max()), "l2": float(applied.norm())}
        if images is None or not len(images):
            raise ConfigError(f"trigger '{self.kind}' changes each image differently; its norms are measured on images, give some")
        diff = (to_pixels(self.apply(images)) - to_pixels(images)).flatten(1)
        return {"linf": float(diff.abs().amax()), "l2": float(diff.norm(dim=1).max())}

    def save(self, path: Path) -> None:
        """Write ``delta`` as safetensors with ``kind``, ``info`` and ``quantize`` in the metadata
        (reproducible bytes); a non-additive trigger also writes its ``family`` and ``params``."""
        meta = {"kind": self.kind, "info": json.dumps(self.info, sort_keys=True), "quantize": json.dumps(self.quantize)}
        if not self.additive:  # additive files stay byte for byte as before families existed
            meta |= {"family": self.family, "params": json.dumps(self.params(), sort_keys=True)}
        save_tensors(Path(path), {"delta": self.delta}, meta)

    @classmethod
    def load(cls, path: Path) -> Trigger:
        """Read a mask written by :meth:`save`; a :class:`CheckpointError` if it is not one."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"trigger file not found: {path}")
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors trigger ({err}); write it with `perturbd trigger make`") from None
        if "delta" not in tensors:
            raise CheckpointError(f"{path} holds no 'delta' tensor; it is not a perturbd trigger")
        family = meta.get("family", "additive")
        families = trigger_families()
        if family not in families:
            raise CheckpointError(
                f"{path} holds a '{family}' trigger, which this perturbd does not know ({', '.join(sorted(families))}); upgrade perturbd"
            )
        try:
            args = (
                tensors["delta"],
                meta.get("kind", "image"),
                json.loads(meta.get("info", "{}")),
                json.loads(meta.get("quantize", "true")),
            )
            return families[family](*args, **json.loads(meta.get("params", "{}")))
        except (TypeError, ValueError) as err:
            raise CheckpointError(
                f"{path}: its '{family}' trigger metadata does not read back ({err}); write it again with this perturbd"
            ) from None


def unpoisoned_sample(size: int, poisoned: torch.Tensor, count: int, seed: int, part: str) -> torch.Tensor:
    """``count`` positions of a set of ``size`` that are not in ``poisoned`` (any class), drawn
    from ``seed`` and ``part``, sorted; as many as there are when fewer are left (for
    :meth:`Trigger.poison_extras`)."""
    count = min(count, size - len(poisoned))
    if count <= 0:
        return torch.zeros(0, dtype=torch.long)
    rest = complement(size, poisoned)
    pick = torch.randperm(len(rest), generator=derived_generator(seed, part, "poison"))[:count]
    return rest[pick].sort().values


@dataclass(frozen=True)
class TriggerContext:
    """What a trigger factory may use. Static masks need only the shape and seed; adaptive masks
    also need the adversary's model and sample images (``None`` for static ones), and, for a
    source-specific attack, its source classes (the samples come from them). ``quantize``: the
    trigger will be applied rounded to uint8 (``poison.quantize``), so non-integral mask values
    are realised in whole grey levels by seeded dithering (static masks, ``sig``)."""

    image_shape: tuple[int, int, int]
    seed: int
    target: int = 0
    model: torch.nn.Module | None = None
    samples: ImageDataset | None = None
    holdout: ImageDataset | None = None
    device: torch.device = torch.device("cpu")  # noqa: RUF009 (a torch.device is immutable)
    sources: tuple[int, ...] | None = None
    quantize: bool = True


TriggerFactory = Callable[[Any, TriggerContext], Trigger]  # (the kind's Params, ctx) -> Trigger


def register_trigger(
    name: str, *, family: type[Trigger] = Trigger, params: type[TriggerParams] | None = None, about: str = ""
) -> Callable[[TriggerFactory], TriggerFactory]:
    """Attach the factory ``(params, ctx) -> Trigger`` of kind ``name`` and its ``family`` class
    to the kind registry (:data:`perturbd.trigger_params.KINDS`). A kind of perturbd's own has
    its ``Params`` registered there already (torch-free, for config checks); a kind defined
    elsewhere passes its ``params`` here (and its one-line ``about``, else the factory's
    docstring's first line) and is registered whole. A second factory for one name raises."""

    def add(fn: TriggerFactory) -> TriggerFactory:
        if params is not None:
            register_params(name, about or (fn.__doc__ or "").strip().split("\n")[0])(params)
        kind = get_kind(name)
        if kind.build is not None:
            raise ValueError(f"trigger '{name}' is already registered")
        kind.build, kind.family = fn, family
        return fn

    return add


def get_kind(name: str) -> Kind:
    """The registered kind ``name``; a one-line :class:`ConfigError` with a suggestion if unknown."""
    return KINDS.get(name)


def list_triggers(pattern: str = "*") -> list[str]:
    return KINDS.names(pattern)


def get_trigger(name: str) -> TriggerFactory:
    """The factory of kind ``name``; a :class:`ConfigError` if the kind is unknown or has none."""
    build = get_kind(name).build
    if build is None:
        raise ConfigError(f"trigger '{name}' has parameters but no factory; import the module that registers it with register_trigger")
    return build


def needs_model(name: str) -> bool:
    """Whether the trigger kind is computed from a model (and so needs the attack's surrogate)."""
    return get_kind(name).params.needs_model


def trigger_families() -> dict[str, type[Trigger]]:
    """Family name → class, from the registered kinds (what :meth:`Trigger.load` reads back)."""
    out: dict[str, type[Trigger]] = {"additive": Trigger}
    for name in KINDS:
        family = KINDS.get(name).family
        if family is not None:
            out[family.family] = family
    return out


def build_trigger(cfg: TriggerConfig, ctx: TriggerContext) -> Trigger:
    """Build the trigger ``cfg.kind`` with its ``cfg.params`` for images of ``ctx.image_shape``."""
    factory = get_trigger(cfg.kind)
    if needs_model(cfg.kind) and ctx.model is None:
        raise ConfigError(f"trigger '{cfg.kind}' is computed from a model; build it through the attack or `perturbd trigger make`")
    return factory(cfg.params, ctx)
