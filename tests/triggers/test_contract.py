"""One contract for every registered trigger kind (driven by the registry, as timm's model tests):
it builds, keeps dtype, shape and range of uint8 and float batches, leaves its input untouched, is
the same for the same seed, and saves and loads back as the same kind that applies identically."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import Field

from perturbd.attack.visibility import at_psnr
from perturbd.config import TriggerConfig, load_config
from perturbd.data.dataset import ImageDataset
from perturbd.errors import ConfigError
from perturbd.trigger_params import KINDS, TriggerParams
from perturbd.triggers import (
    Trigger,
    TriggerContext,
    build_trigger,
    list_triggers,
    needs_model,
    register_trigger,
)

SHAPE = (1, 28, 28)
IMAGES = torch.randint(0, 256, (6, *SHAPE), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
# the kinds computed from a model, at a size that takes a second
FROM_MODEL = {
    "adaptive": {"method": "gradient", "samples": 12, "passes": 1, "batch_size": 12},
    "lf": {"samples": 6, "passes": 1, "max_steps": 5},
    "narcissus": {"samples": 3, "warmup_epochs": 1, "epochs": 2, "batch_size": 2},
}


def _build(kind: str, seed: int, tmp_path: Path, small_cnn) -> Trigger:
    settings: dict = {"kind": kind}
    ctx = TriggerContext(SHAPE, seed)
    if kind == "image":
        Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28) % 200).save(tmp_path / "m.png")
        settings["path"] = tmp_path / "m.png"
    if needs_model(kind):
        samples = ImageDataset(IMAGES.repeat(4, 1, 1, 1), torch.arange(24) % 10, tuple("0123456789"), "tiny")
        settings |= FROM_MODEL.get(kind, {})
        ctx = TriggerContext(SHAPE, seed, 0, small_cnn(0), samples)
    return build_trigger(TriggerConfig(**settings), ctx)


@pytest.mark.parametrize("kind", list_triggers())
def test_every_kind_keeps_dtype_shape_range_and_input(kind: str, tmp_path: Path, small_cnn) -> None:
    trig = _build(kind, 0, tmp_path, small_cnn)
    before = IMAGES.clone()
    out = trig.apply(IMAGES)
    assert out.dtype == torch.uint8 and out.shape == IMAGES.shape and torch.equal(IMAGES, before)
    floats = IMAGES.double() / 255
    moved = trig.apply(floats)
    assert moved.dtype == torch.float64 and moved.shape == IMAGES.shape and float(moved.min()) >= 0 and float(moved.max()) <= 1
    assert torch.equal(floats, IMAGES.double() / 255), "apply must not modify its input"
    soft = replace(trig, quantize=False).apply(IMAGES)
    assert soft.dtype == torch.float32 and float(soft.min()) >= 0 and float(soft.max()) <= 1
    assert (out.double() - IMAGES.double()).abs().max() == trig.norms(1, IMAGES)["linf"] or trig.additive
    assert trig.preview(IMAGES).shape[-2:] == SHAPE[-2:]


@pytest.mark.parametrize("kind", list_triggers())
def test_same_seed_same_trigger_and_it_loads_back_as_itself(kind: str, tmp_path: Path, small_cnn) -> None:
    trig = _build(kind, 3, tmp_path, small_cnn)
    again = _build(kind, 3, tmp_path, small_cnn)
    assert torch.equal(trig.apply(IMAGES), again.apply(IMAGES)), "same seed, same trigger"
    trig.save(tmp_path / "t.safetensors")
    back = Trigger.load(tmp_path / "t.safetensors")
    assert type(back) is type(trig) and back.kind == trig.kind and back.params() == trig.params() and back.quantize == trig.quantize
    assert torch.equal(back.apply(IMAGES), trig.apply(IMAGES))
    assert torch.equal(back.apply(IMAGES.float() / 255), trig.apply(IMAGES.float() / 255))


def test_a_file_of_an_unknown_family_or_bad_params_is_one_line(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from perturbd.errors import CheckpointError

    save_file({"delta": torch.zeros(2, 4, 4)}, str(tmp_path / "a.safetensors"), {"kind": "x", "family": "morph"})
    with pytest.raises(CheckpointError, match="'morph' trigger, which this perturbd does not know"):
        Trigger.load(tmp_path / "a.safetensors")
    save_file(
        {"delta": torch.zeros(2, 4, 4)}, str(tmp_path / "b.safetensors"), {"kind": "wanet", "family": "warp", "params": '{"speed": 1}'}
    )
    with pytest.raises(CheckpointError, match="does not read back"):
        Trigger.load(tmp_path / "b.safetensors")


# --------------------------------------------------------------------------- a new kind: one file, one registry line


class ConstParams(TriggerParams):
    """A throw-away kind's parameters: the shift c of every pixel."""

    amplitude: float = Field(5.0, gt=0, le=255, description="shift c, pixel units 0–255", json_schema_extra={"search": [1e-3, 255.0]})


@dataclass
class Shift(Trigger):
    """A throw-away family: ``x' = x + δ`` through :meth:`transform`; ``delta`` holds δ."""

    family: ClassVar[str] = "shift"


def _const(params: ConstParams, ctx: TriggerContext) -> Trigger:
    _, h, w = ctx.image_shape
    return Shift(torch.full((1, h, w), params.amplitude), "const", {"amplitude": params.amplitude})


@pytest.fixture
def const_kind() -> Iterator[str]:
    register_trigger("const", params=ConstParams, family=Shift)(_const)  # the one registry line
    yield "const"
    KINDS.unregister("const")


def test_a_new_kind_is_one_class_with_its_params_and_one_registry_line(const_kind: str, tmp_path: Path, small_cnn) -> None:
    assert const_kind in list_triggers() and not needs_model(const_kind)
    test_every_kind_keeps_dtype_shape_range_and_input(const_kind, tmp_path, small_cnn)
    test_same_seed_same_trigger_and_it_loads_back_as_itself(const_kind, tmp_path, small_cnn)
    cfg = load_config(overrides=["trigger.kind=const", "trigger.amplitude=7"])
    assert cfg.trigger.label == "const c=7" and cfg.trigger.params == ConstParams(amplitude=7) and cfg.trigger.strength_key == "amplitude"
    with pytest.raises(ConfigError, match=r"config 'trigger.amplitude': Input should be less than or equal to 255"):
        load_config(overrides=["trigger.kind=const", "trigger.amplitude=300"])
    with pytest.raises(ConfigError, match=r"trigger.budget=4 is not a parameter of 'const' \(its parameters: amplitude\)"):
        load_config(overrides=["trigger.kind=const", "trigger.budget=4"])
    grey = torch.full((6, *SHAPE), 100, dtype=torch.uint8)
    found = at_psnr(TriggerConfig(kind="const", psnr=38.6), lambda tc: build_trigger(tc, TriggerContext(SHAPE, 0)), grey)
    assert found.kind == "const" and abs(found.info["psnr_on_adversary_images"] - 38.6) < 0.05  # a shift of 3 grey levels
