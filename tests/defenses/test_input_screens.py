"""Every input screen on every registered architecture (and torchvision's ResNet-18), on grey and
colour images: it fits on clean images and scores and flags new ones."""

from __future__ import annotations

import pytest
import torch

from perturbd.data.dataset import ImageDataset
from perturbd.defenses import build_defense, get_defense, list_defenses
from perturbd.models import get_model, list_models

ARCHS = [*list_models(), "tv:resnet18"]
# cheap settings: a few blends, amplifications, corruptions
SCREENS = {
    "strip": {"overlays": 2, "n_overlay": 3, "n_calibration": 3},
    "scale_up": {"scales": [2, 5]},
    "scale_up data_limited": {"scales": [2, 5], "mode": "data_limited", "per_class": 1},
    "teco": {"corruptions": ["glass_blur", "jpeg_compression"], "seed": 0},
    "ibd_psc": {"n": 2, "n_clean": 6},
}


def test_every_input_screen_is_covered() -> None:
    assert {s.split()[0] for s in SCREENS} == {n for n in list_defenses() if get_defense(n).kind == "input"}


@pytest.mark.parametrize("screen", list(SCREENS))
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_architecture_grey_and_colour(screen: str, arch: str, channels: int) -> None:
    shape = (channels, 16, 16)
    model = get_model(arch, shape, 10, seed=0).eval()
    images = torch.randint(0, 256, (6, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ImageDataset(images, torch.arange(6) % 10, tuple(str(i) for i in range(10)), "random")
    d = build_defense(screen.split()[0], **SCREENS[screen]).fit(model, data)
    s = d.score(images[:2])
    assert s.shape == (2,) and torch.isfinite(s).all()
    assert torch.equal(d.flag(images[:2]), d.flag_scores(s))
