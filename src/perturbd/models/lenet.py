"""``lenet5``: LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling, for any image size.

A different architecture from ``cnn28`` (narrower convs, no BatchNorm, three fully connected
layers): the adversary's surrogate when it does not know the victim's model. It trains even
faster than ``cnn28`` on a CPU.

The first conv is padded so 28×28 images give the classic 5×5×16 map; other sizes (at least
10×10) are average-pooled to 5×5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from perturbd.models.base import Classifier, PoolTo, register_model


class LeNet5(Classifier):
    """conv5×5(6) → pool → ReLU → conv5×5(16) → pool → ReLU → fc120 → fc84 (features) → fc (head)."""

    def __init__(self, image_shape: Sequence[int], num_classes: int) -> None:
        super().__init__(image_shape, num_classes)
        self.body = nn.Sequential(
            nn.Conv2d(self.image_shape[0], 6, 5, padding=2),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(6, 16, 5),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            PoolTo(5),
            nn.Flatten(),
            nn.Linear(16 * 25, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(84, num_classes)
        self.to(memory_format=torch.channels_last)


@register_model
def lenet5(image_shape: Sequence[int], num_classes: int) -> Classifier:
    return LeNet5(image_shape, num_classes)
