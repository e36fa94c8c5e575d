"""Static triggers: every static kind keeps dtype, shape, range and budget; the patterns; masks from
files (the kernel that applies them, its rounding and the trigger file: test_base.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from perturbd.config import TriggerConfig, validate
from perturbd.errors import ConfigError
from perturbd.triggers import TriggerContext, build_trigger, list_triggers, needs_model
from perturbd.triggers.static import grid_pattern

STATIC = [
    k
    for k in list_triggers()
    if not needs_model(k)
    and k not in ("image", "blended", "sig", "sig_ramp", "sig_wrap", "sig_ramp_wrap", "wanet", "ftrojan", "bpp", "adap_blend")
]  # the masks of amplitude c
SHAPES = [(1, 28, 28), (3, 32, 32)]


def _images(shape: tuple[int, int, int], n: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8)
    imgs[0] = 0  # exercise clipping at both ends
    imgs[1] = 255
    return imgs


@pytest.mark.parametrize("kind", STATIC)
@pytest.mark.parametrize("shape", SHAPES)
def test_trigger_keeps_dtype_shape_range_and_input(kind: str, shape: tuple[int, int, int]) -> None:
    trig = build_trigger(TriggerConfig(kind=kind, amplitude=10), TriggerContext(shape, seed=0))
    imgs = _images(shape)
    before = imgs.clone()
    out = trig.apply(imgs)
    assert out.dtype == torch.uint8 and out.shape == imgs.shape
    assert torch.equal(imgs, before), "apply must not modify its input"
    diff = (out.int() - imgs.int()).abs()
    assert int(diff.max()) <= 10, "the L∞ budget must hold after rounding and clipping"
    floats = trig.apply(imgs.float() / 255)
    assert floats.dtype == torch.float32 and float(floats.min()) >= 0 and float(floats.max()) <= 1


def test_grid_is_every_other_row_and_column() -> None:
    delta = grid_pattern(4, 4, 6.0)[0]
    expected = torch.tensor([[6, 0, 6, 0], [0, 0, 0, 0], [6, 0, 6, 0], [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(delta, expected)


def test_random_trigger_is_reproducible_from_seed() -> None:
    cfg = TriggerConfig(kind="random", amplitude=4)
    a = build_trigger(cfg, TriggerContext((1, 28, 28), seed=3)).delta
    b = build_trigger(cfg, TriggerContext((1, 28, 28), seed=3)).delta
    c = build_trigger(cfg, TriggerContext((1, 28, 28), seed=4)).delta
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {-4.0, 4.0}


def test_image_mask_from_png_and_npy(tmp_path) -> None:
    arr = np.zeros((28, 28), dtype=np.uint8)
    arr[10:12, 10:12] = 255
    Image.fromarray(arr).save(tmp_path / "m.png")
    trig = build_trigger(TriggerConfig(kind="image", path=tmp_path / "m.png", amplitude=8), TriggerContext((1, 28, 28), 0))
    assert float(trig.delta.max()) == 8.0 and int((trig.delta > 0).sum()) == 4
    np.save(tmp_path / "m.npy", np.full((3, 32, 32), -2.0, dtype=np.float32))
    trig = build_trigger(TriggerConfig(kind="image", path=tmp_path / "m.npy"), TriggerContext((3, 32, 32), 0))
    assert float(trig.delta.min()) == -2.0


def test_mask_of_wrong_size_is_one_clear_error(tmp_path) -> None:
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(ConfigError, match=r"resize the mask to 28×28"):
        build_trigger(TriggerConfig(kind="image", path=tmp_path / "m.png"), TriggerContext((1, 28, 28), 0))


def test_missing_mask_and_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="not found"):
        build_trigger(TriggerConfig(kind="image", path="/nonexistent/m.png"), TriggerContext((1, 28, 28), 0))
    with pytest.raises(ConfigError, match="did you mean 'grid'"):
        validate({"kind": "gird"}, TriggerConfig)  # an unknown kind stops at the config


@pytest.mark.parametrize("amplitude", [-1, 0, 300])
def test_amplitude_out_of_range_is_rejected(amplitude: float) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        TriggerConfig(amplitude=amplitude)


@pytest.mark.parametrize("kind", ["grid", "chessboard", "ring", "random", "patch"])
def test_a_dithered_amplitude_moves_the_rounded_mask_smoothly_and_monotonically(kind: str) -> None:
    amplitudes = [9 + 0.1 * i for i in range(21)]  # 9.0 … 11.0
    energy = [
        float(build_trigger(TriggerConfig(kind=kind, amplitude=c), TriggerContext((1, 28, 28), seed=2)).applied().pow(2).mean())
        for c in amplitudes
    ]
    assert all(b >= a for a, b in itertools.pairwise(energy)), "never lighter for a larger c"
    plain = [
        float(build_trigger(TriggerConfig(kind=kind, amplitude=c), TriggerContext((1, 28, 28), seed=2)).applied().pow(2).mean())
        for c in (9.0, 10.0, 11.0)
    ]
    assert energy[0] == plain[0] and energy[10] == plain[1] and energy[20] == plain[2], "integral c: the plain mask"
    steps = 15 if kind != "patch" else 5  # the 3×3 patch has 9 pixels to dither
    assert len(set(energy)) > steps, "in between, the energy interpolates instead of jumping a grey level at a time"
