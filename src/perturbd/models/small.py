"""``cnn28``: a small, fast CNN for 28×28 grey images (MNIST, Fashion-MNIST).

Two 3×3 "same" conv blocks with BatchNorm, then two fully connected layers over the 7×7 feature
map (no BatchNorm there, so a batch of one still trains). "Same" padding keeps every pixel
position aligned through the 2×2 pools, and the fully connected layer sees where a feature is:
both matter for faint, high-frequency triggers (an earlier 5×5 "valid" variant of equal cost learned
the default grid trigger far less well). Max-pooling comes before BatchNorm and ReLU (max-pool
commutes with ReLU), so both run on a quarter of the pixels, and conv weights are stored
channels-last; together these make CPU training faster than the textbook order. Its training speed
and accuracy on full MNIST (SGD, lr 0.05, momentum 0.9, cosine) are in README.md ("Speed
(measured)") and experiments/README.md.

Other image sizes work (at least 4×4): the conv output is average-pooled to 7×7, which is the
identity for 28×28 inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from perturbd.models.base import Classifier, PoolTo, register_model


def _conv_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(Classifier):
    """conv3×3 → pool → BN → ReLU (×2), fc → ReLU (features), fc (head).

    Args:
        image_shape: ``(C, H, W)``, H and W at least 16.
        num_classes: number of logits.
        widths: channels of the two conv blocks.
        hidden: width of the penultimate layer (``features`` dimension D).
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int, widths: tuple[int, int] = (16, 32), hidden: int = 128) -> None:
        super().__init__(image_shape, num_classes)
        c1, c2 = widths
        self.body = nn.Sequential(
            *_conv_block(self.image_shape[0], c1),
            *_conv_block(c1, c2),
            PoolTo(7),
            nn.Flatten(),
            nn.Linear(c2 * 49, hidden),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(hidden, num_classes)
        self.to(memory_format=torch.channels_last)


@register_model
def cnn28(image_shape: Sequence[int], num_classes: int) -> Classifier:
    return SmallCNN(image_shape, num_classes, widths=(16, 32), hidden=128)
