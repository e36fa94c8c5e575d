"""``cnn32``: a small VGG-style CNN with BatchNorm for 32×32 colour images (CIFAR-10, SVHN, GTSRB).

Three blocks of 3×3 convs (widths 32-64-128), each ending in a 2×2 max-pool, then global average
pooling and one linear layer, so any image size of at least 8×8 and any channel count work.
In the last conv of a block, max-pooling comes before BatchNorm and ReLU, which then run on a
quarter of the pixels (a cheaper variant of the textbook order, not an identical one).

``cnn32`` has two convs per block; ``cnn32_small`` one, faster on a CPU (measured: README.md,
"Speed (measured)", ``benchmarks.bench_colour``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from perturbd.models.base import Classifier, register_model


def _conv(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return [*layers, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class VGGish(Classifier):
    """Blocks of ``convs`` × (conv3×3 → BN → ReLU) ending in a max-pool; global average pool; fc.

    Args:
        image_shape: ``(C, H, W)``, H and W at least ``2 ** len(widths)``.
        num_classes: number of logits.
        widths: output channels of each block; the last is the ``features`` dimension D.
        convs: conv layers per block.
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (32, 64, 128), convs: int = 2) -> None:
        super().__init__(image_shape, num_classes)
        layers: list[nn.Module] = []
        cin = self.image_shape[0]
        for width in widths:
            for i in range(convs):
                layers += _conv(cin, width, pool=i == convs - 1)
                cin = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        self.to(memory_format=torch.channels_last)


@register_model
def cnn32(image_shape: Sequence[int], num_classes: int) -> Classifier:
    return VGGish(image_shape, num_classes, widths=(32, 64, 128), convs=2)


@register_model
def cnn32_small(image_shape: Sequence[int], num_classes: int) -> Classifier:
    return VGGish(image_shape, num_classes, widths=(32, 64, 128), convs=1)
