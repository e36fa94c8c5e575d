"""The trigger kernel and file: add_delta's rounding, clipping, dtypes and shapes; Trigger's
checks, norms and bit-identical safetensors round trip; the trigger registry."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from perturbd.config import TriggerConfig
from perturbd.errors import CheckpointError, ConfigError
from perturbd.triggers import Trigger, TriggerContext, add_delta, build_trigger, get_trigger, list_triggers, needs_model, register_trigger

FAST = settings(max_examples=40, deadline=None)

# --------------------------------------------------------------------------- add_delta


def test_clipping_saturates_at_255_and_0() -> None:
    imgs = torch.tensor([250, 3], dtype=torch.uint8).view(2, 1, 1, 1)
    up = add_delta(imgs, torch.full((1, 1, 1), 10.0))
    down = add_delta(imgs, torch.full((1, 1, 1), -10.0))
    assert up.flatten().tolist() == [255, 13]
    assert down.flatten().tolist() == [240, 0]


def test_uint8_rounding_matches_rounding_the_float_result() -> None:
    imgs = torch.arange(0, 256, dtype=torch.uint8).view(-1, 1, 1, 1)
    for value in (0.4, 0.6, 2.5, -1.5, 3.49):
        delta = torch.full((1, 1, 1), value)
        quantized = add_delta(imgs, delta)
        exact = torch.round((imgs.double() + torch.round(delta).double()).clamp(0, 255)).to(torch.uint8)
        assert torch.equal(quantized, exact)


def test_float_images_get_delta_over_255_clamped_and_keep_their_dtype() -> None:
    for dtype in (torch.float32, torch.float64):
        imgs = torch.tensor([0.0, 0.5, 0.98], dtype=dtype).view(3, 1, 1, 1)
        out = add_delta(imgs, torch.full((1, 1, 1), 25.5))  # no rounding for floats: 0.1 exactly
        assert out.dtype == dtype
        torch.testing.assert_close(out.flatten(), torch.tensor([0.1, 0.6, 1.0], dtype=dtype))
        assert add_delta(imgs, torch.full((1, 1, 1), -255.0)).flatten().tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_the_input_is_left_untouched(dtype) -> None:
    imgs = torch.randint(0, 256, (4, 3, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).to(dtype)
    before = imgs.clone()
    out = add_delta(imgs, torch.full((3, 5, 5), 7.0))
    assert torch.equal(imgs, before) and out.data_ptr() != imgs.data_ptr()


def test_one_channel_delta_is_broadcast_over_colour_channels() -> None:
    imgs = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    delta = torch.arange(16, dtype=torch.float32).view(1, 4, 4)
    out = add_delta(imgs, delta)
    assert out.shape == (2, 3, 4, 4)
    assert all(torch.equal(out[:, c], delta.to(torch.uint8).expand(2, 4, 4)) for c in range(3))


@pytest.mark.parametrize(
    ("image_shape", "delta_shape"),
    [((1, 28, 28), (1, 32, 32)), ((3, 32, 32), (2, 32, 32)), ((1, 28, 28), (3, 28, 28)), ((3, 32, 32), (3, 32, 28))],
)
def test_a_delta_of_another_shape_is_one_line_config_error(image_shape, delta_shape) -> None:
    with pytest.raises(ConfigError) as err:
        add_delta(torch.zeros(1, *image_shape, dtype=torch.uint8), torch.zeros(delta_shape))
    message = str(err.value)
    assert f"trigger of shape {delta_shape} does not fit images of shape {image_shape}" in message and "\n" not in message


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_other_image_dtypes_are_refused(dtype) -> None:
    with pytest.raises(TypeError, match=f"images must be uint8 or floating point, got {dtype}"):
        add_delta(torch.zeros(1, 1, 2, 2, dtype=dtype), torch.ones(1, 2, 2))


# --------------------------------------------------------------------------- Trigger


def test_the_mask_is_stored_as_detached_float32_on_the_cpu() -> None:
    delta = torch.full((1, 3, 3), 2.0, dtype=torch.float64, requires_grad=True)
    trig = Trigger(delta.transpose(1, 2), "grid")
    assert trig.delta.dtype == torch.float32 and trig.delta.device.type == "cpu"
    assert not trig.delta.requires_grad and trig.delta.is_contiguous() and trig.info == {}
    assert torch.equal(trig.apply(torch.zeros(1, 1, 3, 3, dtype=torch.uint8)), torch.full((1, 1, 3, 3), 2, dtype=torch.uint8))


@pytest.mark.parametrize(
    ("delta", "message"),
    [(torch.zeros(28, 28), r"must be \(C, H, W\), got shape \(28, 28\)"),
     (torch.zeros(1, 1, 28, 28), r"must be \(C, H, W\), got shape \(1, 1, 28, 28\)"),
     (torch.tensor([[[1.0, math.nan]]]), "finite values"),
     (torch.tensor([[[math.inf, 1.0]]]), "finite values")],
)  # fmt: skip
def test_a_bad_mask_is_refused(delta, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Trigger(delta, "x")


def test_norms_are_of_the_mask_as_applied_to_uint8_images() -> None:
    trig = Trigger(torch.tensor([[[0.4, -0.6], [2.5, 3.5]]]), "x")  # rounds (half to even) to 0, -1, 2, 4
    norms = trig.norms()
    assert norms["linf"] == 4.0 and norms["l2"] == pytest.approx(math.sqrt(1 + 4 + 16), rel=1e-6)


def test_save_load_is_bit_identical(tmp_path) -> None:
    trig = build_trigger(TriggerConfig(kind="chessboard", amplitude=6), TriggerContext((3, 32, 32), seed=0))
    trig.save(tmp_path / "t.safetensors")
    back = Trigger.load(tmp_path / "t.safetensors")
    assert torch.equal(back.delta, trig.delta) and back.kind == "chessboard" and back.info == trig.info


@FAST
@given(seed=st.integers(0, 10**6), c=st.sampled_from([1, 3]))
def test_trigger_save_load_is_bit_identical(seed: int, c: int, tmp_path_factory) -> None:
    delta = torch.randn(c, 5, 7, generator=torch.Generator().manual_seed(seed)) * 30
    path = tmp_path_factory.mktemp("t") / "t.safetensors"
    Trigger(delta, "random", {"seed": seed}).save(path)
    back = Trigger.load(path)
    assert torch.equal(back.delta, delta) and back.info == {"seed": seed}


def test_save_gives_the_same_bytes_for_the_same_mask(tmp_path) -> None:
    delta = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0))
    Trigger(delta, "random", {"seed": 1, "amplitude": 4}).save(tmp_path / "a.safetensors")
    Trigger(delta.clone(), "random", {"amplitude": 4, "seed": 1}).save(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_a_file_without_metadata_loads_as_an_image_mask(tmp_path) -> None:
    save_file({"delta": torch.ones(1, 2, 2)}, str(tmp_path / "m.safetensors"))
    back = Trigger.load(tmp_path / "m.safetensors")
    assert back.kind == "image" and back.info == {} and torch.equal(back.delta, torch.ones(1, 2, 2))


def test_loading_what_is_not_a_trigger_is_a_checkpoint_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="trigger file not found"):
        Trigger.load(tmp_path / "absent.safetensors")
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(CheckpointError, match="is not a readable safetensors trigger .*; write it with `perturbd trigger make`") as err:
        Trigger.load(tmp_path / "text.safetensors")
    assert "\n" not in str(err.value)
    save_file({"weights": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="holds no 'delta' tensor; it is not a perturbd trigger"):
        Trigger.load(tmp_path / "model.safetensors")


# --------------------------------------------------------------------------- the registry


def test_the_registry_names_every_kind_and_which_need_a_model() -> None:
    assert list_triggers() == [
        "adap_blend",
        "adaptive",
        "blended",
        "bpp",
        "chessboard",
        "ftrojan",
        "grid",
        "image",
        "lf",
        "narcissus",
        "patch",
        "random",
        "ring",
        "sig",
        "sig_ramp",
        "sig_ramp_wrap",
        "sig_wrap",
        "wanet",
    ]
    assert list_triggers("r*") == ["random", "ring"]
    assert [k for k in list_triggers() if needs_model(k)] == ["adaptive", "lf", "narcissus"]
    with pytest.raises(ConfigError, match=r"^unknown trigger 'gird'; did you mean 'grid'\?$"):
        get_trigger("gird")
    with pytest.raises(ValueError, match="trigger 'grid' is already registered"):
        register_trigger("grid")(lambda cfg, ctx: Trigger(torch.zeros(1, 1, 1), "grid"))
    assert build_trigger(TriggerConfig(kind="grid", amplitude=6), TriggerContext((1, 4, 4), 0)).kind == "grid"


def test_norms_are_of_the_mask_as_applied_to_colour_images() -> None:
    # a 1-channel chessboard broadcast over 3 channels moves 3 × 32 × 32 values by c = 10
    board = Trigger(10.0 * (1 - 2 * ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2)).float()[None], "chessboard")
    assert board.norms(3) == pytest.approx({"linf": 10.0, "l2": 10.0 * (3 * 32 * 32) ** 0.5})
    assert board.norms() == pytest.approx({"linf": 10.0, "l2": 320.0}), "on grey images: its own channel"
    assert board.applied(3).shape == (3, 32, 32)
