"""``preact_resnet18``: the pre-activation ResNet-18 that backdoor papers use on CIFAR.

He et al., "Identity Mappings in Deep Residual Networks" (arXiv 1603.05027), in the CIFAR form of
BackdoorBench (``models/preact_resnet.py``): a 3×3 stride-1 stem conv of 64 channels, four
stages of two PreAct basic blocks (widths 64-128-256-512, strides 1-2-2-2; a 1×1 conv shortcut
where the shape changes), average pooling, one linear layer. As in BackdoorBench there is no
BatchNorm/ReLU after the last stage, so checkpoint numbers compare with the field's. Average
pooling is global (BackdoorBench's 4×4 pool is the same for 32×32 inputs), so other sizes work.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from perturbd.models.base import Classifier, register_model


class PreActBlock(nn.Module):
    """BN → ReLU → conv3×3 → BN → ReLU → conv3×3, plus the (projected) input."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = F.relu(self.bn1(x))
        skip: Tensor = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet(Classifier):
    """Stem conv, four stages of :class:`PreActBlock`, global average pool (features), linear (head).

    Args:
        image_shape: ``(C, H, W)``; any channel count and size.
        num_classes: number of logits.
        depths: blocks per stage.
        widths: channels per stage; the last is the ``features`` dimension D.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        num_classes: int,
        depths: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__(image_shape, num_classes)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv1"] = nn.Conv2d(self.image_shape[0], widths[0], 3, stride=1, padding=1, bias=False)
        cin = widths[0]
        for i, (depth, width) in enumerate(zip(depths, widths)):
            stride = 1 if i == 0 else 2
            blocks = [PreActBlock(cin if j == 0 else width, width, stride if j == 0 else 1) for j in range(depth)]
            layers[f"layer{i + 1}"] = nn.Sequential(*blocks)
            cin = width
        layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        self.body = nn.Sequential(layers)
        self.fc = nn.Linear(cin, num_classes)


@register_model
def preact_resnet18(image_shape: Sequence[int], num_classes: int) -> Classifier:
    return PreActResNet(image_shape, num_classes, depths=(2, 2, 2, 2))
