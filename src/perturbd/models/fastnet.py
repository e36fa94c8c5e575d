"""``fastnet32``: a fast, plain CNN for 32×32 colour images, built for seconds-long GPU training.

The design follows the public lessons of fast CIFAR-10 training (Page's "How to train your
ResNet", Jordan's airbench): few, wide layers at low resolution; no residual connections; max-pool
right after the first conv of a block, so BatchNorm, the activation and the second conv run on a
quarter of the pixels; BatchNorm everywhere with a short memory (running statistics follow the
last few steps of a short run); GELU; a global max-pool; a linear head whose output is scaled
down (``head_scale``), which lets the body take a large learning rate without making the logits
explode; and convs initialised partly as the identity (the first ``min(C_in, C_out)`` filters
pass their input channel through, the rest keep PyTorch's random init), so a fresh network starts
close to a shallow one and needs fewer epochs. Everything is data-independent: the same seed
gives the same weights, and no step of training is special.

Layout (32×32 input; any size of at least 8×8 and any channel count works)::

    stem   conv3×3 C→32                       BN GELU     32×32
    block  conv3×3 32→64   maxpool2  BN GELU  conv3×3 64→64   BN GELU     16×16
    block  conv3×3 64→256  maxpool2  BN GELU  conv3×3 256→256 BN GELU      8×8
    block  conv3×3 256→256 maxpool2  BN GELU  conv3×3 256→256 BN GELU      4×4
    global max-pool → features (D = 256) → linear × head_scale → logits

About 2.0 M parameters and 0.15 GMAC per 32×32 image (forward).

Recipe (:data:`RECIPE`, also ``configs/cifar10-fastnet.yaml``): batch 1024; Nesterov SGD with
momentum 0.9, lr 0.8 (on the mean loss), weight decay 5e-4; lr rising linearly over the first
20 % of the steps, then falling linearly to 0; label smoothing 0.2; random crop (pad 4) and flip;
16 epochs; bf16 autocast and channels-last on a GPU. These are the published settings of Page's
ResNet-9 (lr 0.4 at batch 512, peak at 21 % of training) scaled linearly to batch 1024.
**Its accuracy target (≥ 92 % on CIFAR-10 (JPEG), no test-time augmentation) has not been
measured yet**: it was written on a machine without a GPU; ``benchmarks/README.md`` has the
command that checks it.

``fastnet32_small`` is the same design sized for a CPU: stem 24, block widths 32-128-128 (0.5 M
parameters, 41 M multiply-accumulates per 32×32 image, a quarter of fastnet32's 152 M), trained
by :data:`CPU_RECIPE` (also ``configs/cifar10-cpu-fastnet.yaml``): batch 512, lr 0.4 (fastnet32's lr
per image), 15 epochs, bf16 autocast, the rest as :data:`RECIPE`. Its training speed beside
cnn32 and fastnet32 in fp32 and bf16 is measured by ``python -m benchmarks.bench_models``, the
accuracy and wall time of a whole CIFAR-10 (JPEG) experiment by ``python -m benchmarks.bench_e2e
--cifar``; the README ("Speed") has the figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perturbd.models.base import Classifier, register_model

#: ``train`` section for fastnet32 on CIFAR-10-sized data (50,000 images). Units: lr per optimiser
#: step on the mean (not summed) loss; warmup as a fraction of all steps; weight decay per step.
RECIPE: dict[str, Any] = {
    "epochs": 16,
    "batch_size": 1024,
    "optimizer": "sgd",
    "lr": 0.8,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "linear",
    "warmup": 0.2,
    "label_smoothing": 0.2,
    "augment": "crop_flip",
    "precision": "auto",
}

#: ``train`` section for fastnet32_small on a CPU (CIFAR-10-sized data): :data:`RECIPE` at half the
#: batch and lr (the same lr per image), 15 epochs, bf16 autocast (fast only with AMX/AVX512-BF16).
CPU_RECIPE: dict[str, Any] = {**RECIPE, "epochs": 15, "batch_size": 512, "lr": 0.4, "precision": "bf16"}


class ScaledLinear(nn.Linear):
    """``nn.Linear`` whose output is multiplied by a fixed ``scale`` (no parameter, not learned).

    A small scale damps the logits' step size under a large learning rate; the weights still
    receive the full gradient signal through BatchNorm-normalised features.
    """

    def __init__(self, in_features: int, out_features: int, scale: float, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale:g}"


def _bn(width: int, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(width, momentum=momentum)


def _identity_init(conv: nn.Conv2d) -> None:
    """Overwrite the first ``min(C_in, C_out)`` filters of ``conv`` with the identity (a centred
    Dirac delta from input channel i to output channel i); the other filters keep their init."""
    k = min(conv.in_channels, conv.out_channels)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:k, :k])
        conv.weight[:k, k:].zero_()


def _block(cin: int, cout: int, momentum: float, norm: Callable[[int, float], nn.Module] = _bn) -> list[nn.Module]:
    """conv → maxpool → BN → GELU → conv → BN → GELU: halves the resolution."""
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.MaxPool2d(2),
        norm(cout, momentum),
        nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        norm(cout, momentum),
        nn.GELU(),
    ]


class FastNet(Classifier):
    """Stem plus three conv blocks, global max-pool, scaled linear head.

    Args:
        image_shape: ``(C, H, W)``, H and W at least 8.
        num_classes: number of logits.
        widths: output channels of the three blocks; the last is the ``features`` dimension D.
        stem: output channels of the stem conv.
        head_scale: factor applied to the head's output (dimensionless).
        bn_momentum: PyTorch BatchNorm momentum (weight of the newest batch in the running
            statistics; 0.1 is PyTorch's default, larger forgets faster).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        num_classes: int,
        widths: Sequence[int] = (64, 256, 256),
        stem: int = 32,
        head_scale: float = 1 / 8,
        bn_momentum: float = 0.2,
    ) -> None:
        super().__init__(image_shape, num_classes)
        if len(widths) != 3:
            raise ValueError(f"FastNet takes three block widths, got {tuple(widths)}")
        layers: list[nn.Module] = [nn.Conv2d(self.image_shape[0], stem, 3, padding=1, bias=False), _bn(stem, bn_momentum), nn.GELU()]
        cin = stem
        for width in widths:
            layers += _block(cin, width, bn_momentum)
            cin = width
        for layer in layers[3:]:  # the stem keeps its random init: it must mix the colour channels
            if isinstance(layer, nn.Conv2d):
                _identity_init(layer)
        self.body = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.fc = ScaledLinear(cin, num_classes, head_scale)
        self.to(memory_format=torch.channels_last)


@register_model
def fastnet32(image_shape: Sequence[int], num_classes: int) -> Classifier:
    return FastNet(image_shape, num_classes, widths=(64, 256, 256), stem=32)


@register_model
def fastnet32_small(image_shape: Sequence[int], num_classes: int) -> Classifier:
    return FastNet(image_shape, num_classes, widths=(32, 128, 128), stem=24)
