"""LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling, for any image size: ``lenet5`` and
``lenet5_valid``.

A different architecture from ``cnn28`` (narrower convs, no BatchNorm, three fully connected
layers): the adversary's surrogate when it does not know the victim's model. It trains even
faster than ``cnn28`` on a CPU.

``lenet5`` pads its first conv so 28×28 images give the classic 5×5×16 map; other sizes (at least
10×10) are average-pooled to 5×5. ``lenet5_valid`` is the LeNet-5 of the SIG authors' MNIST code
(Barni et al. 2019, KassemKallas/BackdoorAttack-ICIP2019, ``models.py``, Keras): both convs
unpadded ("valid"), so 28×28 images give a 4×4×16 map and 256 inputs to the first fully connected
layer; other sizes (at least 16×16) are average-pooled to 4×4. Its weights start from PyTorch's
default initialisation, not Keras's Glorot-uniform.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from perturbd.models.base import Classifier, PoolTo, register_model


class LeNet5(Classifier):
    """conv5×5(6) → pool → ReLU → conv5×5(16) → pool → ReLU → fc120 → fc84 (features) → fc (head).

    Args:
        image_shape: ``(C, H, W)``.
        num_classes: number of logits.
        padding: of the first conv: 2 (classic, 5×5 map) or 0 ("valid", 4×4 map).
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int, padding: int = 2) -> None:
        super().__init__(image_shape, num_classes)
        side = 5 if padding else 4
        self.body = nn.Sequential(
            nn.Conv2d(self.image_shape[0], 6, 5, padding=padding),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(6, 16, 5),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            PoolTo(side),
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(84, num_classes)
        self.to(memory_format=torch.channels_last)


@register_model
def lenet5(image_shape: Sequence[int], num_classes: int) -> Classifier:
    return LeNet5(image_shape, num_classes)


@register_model
def lenet5_valid(image_shape: Sequence[int], num_classes: int) -> Classifier:
    return LeNet5(image_shape, num_classes, padding=0)
