"""``whitenet32`` and ``whitenet32_small``: fastnet's blocks behind a frozen patch-whitening stem.

Learned from Jordan's airbench (94 % on CIFAR-10 in about ten epochs) and Page's ResNet-9, written
for perturbd: the tricks that cost nothing per step and buy accuracy per epoch.

- **Patch whitening.** The first layer is a frozen 2×2 convolution whose filters are the
  eigenvectors of the covariance of the training images' 2×2 patches (after the model's own
  normalisation), each scaled by ``1 / sqrt(λ + 5e-4)``, and their negatives (so the GELU after it
  keeps both signs): 12 directions × 2 = 24 channels, no padding (32 → 31 pixels). The network
  starts from decorrelated inputs, the step the first conv of a plain network spends epochs on.
  The filters come from the first :data:`perturbd.train.INIT_IMAGES` training images, once, in
  :meth:`WhiteNet.init_from_data` (``perturbd.train.fit`` calls it before the first step; a model
  already whitened — a loaded checkpoint, a model being fine-tuned — keeps its filters). The
  stem's bias is learned.
- **BatchNorm for short runs.** No learned scale (the weight is frozen at 1: the conv before it
  sets the scale), ε = 1e-12, and a short memory (PyTorch momentum 0.4) so the running
  statistics follow the last steps.
- As :mod:`fastnet`: max-pool right after the first conv of each block, GELU, identity
  (Dirac) initialisation of the first ``min(C_in, C_out)`` filters of each block conv, a global
  max-pool and a bias-free linear head scaled by 1/9 (airbench's).

Layout of ``whitenet32`` (3×32×32 input; airbench's widths)::

    whiten  conv2×2 3→24 (frozen)  GELU                                 31×31
    block   conv3×3 24→64    maxpool2  BN GELU  conv3×3 64→64   BN GELU 15×15
    block   conv3×3 64→256   maxpool2  BN GELU  conv3×3 256→256 BN GELU  7×7
    block   conv3×3 256→256  maxpool2  BN GELU  conv3×3 256→256 BN GELU  3×3
    global max-pool → features (D = 256) → linear / 9 → logits

2.0 M parameters, 118 M multiply-accumulates per image (forward). ``whitenet32_small`` has
block widths 64-128-128: 0.57 M parameters, 54 M multiply-accumulates, the CPU's choice.

Recipe (:data:`CPU_RECIPE`, also ``configs/cifar10-cpu.yaml``), for ``whitenet32_small``:
airbench's optimiser on the mean loss — batch 1024, Nesterov SGD momentum 0.85, lr 1.5, weight
decay 1.33e-3 (airbench's lr 11.5 and decay 0.0153 per 1024 images of summed loss, divided by
its ``1024·(1 + 1/(1 − 0.85))``); BatchNorm biases at 64× the lr (``train.bias_lr_scale``); the
triangle schedule (0.2 → 1 over the first 23 % of the steps → 0.07); Lookahead
(``train.lookahead``); label smoothing 0.2; shift by up to 2 pixels with mirrored borders and
alternating flip (``augment: shift_flip``); 11 epochs; bf16 autocast. Departures from airbench:
its whitening bias is trained for the first 3 epochs only (here throughout); it normalises with
CIFAR-10's channel means and deviations (here the model's own 0.5 / 0.5: the whitening absorbs
the scale); it evaluates with test-time augmentation (here none: the plain model is measured).

Why these sizes, on the 2-core CPU (bf16, scratch trials on the victim's 40,000 CIFAR-10 (JPEG)
images, seed 0, before this module existed): airbench's widths for 6 epochs reached 87.1 %,
64-128-128 for 11 epochs 87.9 % in 530 s (batch 512 instead: 87.8 %). On a CPU the step costs
its arithmetic (convolutions are 85 % of it and run near the machine's bf16 matmul rate), so the
narrower network's extra epochs pay more than the wider one's width. Measured accuracy and time
of this module's recipe: ``benchmarks/results/bench_colour-*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from perturbd.models.base import Classifier, register_model
from perturbd.models.fastnet import ScaledLinear, _block, _identity_init

#: ``train`` section for whitenet32 on CIFAR-10-sized data on a CPU (units as fastnet's RECIPE).
CPU_RECIPE: dict[str, Any] = {
    "epochs": 11,
    "batch_size": 1024,
    "optimizer": "sgd",
    "lr": 1.5,
    "momentum": 0.85,
    "weight_decay": 0.00133,
    "bias_lr_scale": 64.0,
    "schedule": "triangle",
    "warmup": 0.23,
    "lookahead": True,
    "label_smoothing": 0.2,
    "augment": "shift_flip",
    "precision": "bf16",
}


class ShortBatchNorm(nn.BatchNorm2d):
    """BatchNorm with no learned scale (weight frozen at 1), ε = 1e-12 and a short memory."""

    def __init__(self, width: int, momentum: float) -> None:
        super().__init__(width, eps=1e-12, momentum=momentum)
        self.weight.requires_grad_(False)


class PatchWhitening(nn.Conv2d):
    """A frozen ``k×k`` conv whose ``2·C·k²`` filters whiten the ``k×k`` patches of the data it
    was shown (:meth:`fit`): the covariance's eigenvectors over ``sqrt(λ + eps)``, and their
    negatives. ``whitened`` (saved with the weights) records that it has been fitted."""

    whitened: Tensor  # a buffer: a 0-d bool

    def __init__(self, channels: int, k: int = 2, eps: float = 5e-4) -> None:
        super().__init__(channels, 2 * channels * k * k, k, padding=0, bias=True)
        self.eps = eps
        self.weight.requires_grad_(False)
        self.register_buffer("whitened", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Set the filters from normalised images ``x`` ``(N, C, H, W)`` (float64 arithmetic)."""
        c, k = self.in_channels, self.kernel_size[0]
        patches = x.double().unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
        flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
        cov = flat.T @ flat / len(flat)
        eigenvalues, vectors = torch.linalg.eigh(cov)
        filters = (vectors.T / torch.sqrt(eigenvalues + self.eps)[:, None]).reshape(-1, c, k, k)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.dtype))
        self.whitened.fill_(True)


class WhiteNet(Classifier):
    """Patch-whitening stem, three fastnet blocks, global max-pool, bias-free head scaled by 1/9.

    Args:
        image_shape: ``(C, H, W)``, H and W at least 16.
        num_classes: number of logits.
        widths: output channels of the three blocks; the last is the ``features`` dimension D.
        bn_momentum: PyTorch BatchNorm momentum (weight of the newest batch).
    """

    shape_hint = "whitenet32 needs images of at least 16×16 pixels"

    def __init__(
        self, image_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (64, 256, 256), bn_momentum: float = 0.4
    ) -> None:
        super().__init__(image_shape, num_classes)
        self.whiten = PatchWhitening(self.image_shape[0])
        layers: list[nn.Module] = [self.whiten, nn.GELU()]
        cin = self.whiten.out_channels
        for width in widths:
            layers += _block(cin, width, bn_momentum, ShortBatchNorm)
            cin = width
        for layer in layers[2:]:
            if isinstance(layer, nn.Conv2d):
                _identity_init(layer)
        self.body = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.fc = ScaledLinear(cin, num_classes, 1 / 9)
        # channels-last weights make oneDNN (CPU) and cuDNN run the convolutions channels-last
        self.to(memory_format=torch.channels_last)

    def init_from_data(self, images: Tensor) -> None:
        """Fit the whitening stem to ``images`` (float in [0, 1]) unless it already is."""
        if not bool(self.whiten.whitened):
            self.whiten.fit(self.normalize(images.to(self.whiten.weight.device)))


@register_model
def whitenet32(image_shape: Sequence[int], num_classes: int) -> Classifier:
    return WhiteNet(image_shape, num_classes, widths=(64, 256, 256))


@register_model
def whitenet32_small(image_shape: Sequence[int], num_classes: int) -> Classifier:
    return WhiteNet(image_shape, num_classes, widths=(64, 128, 128))
