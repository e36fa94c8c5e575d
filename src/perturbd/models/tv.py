"""``tv:<name>``: any torchvision classification model, built without pretrained weights.

``tv:resnet18``, ``tv:vgg11_bn``, ``tv:mobilenet_v3_small``, ``tv:efficientnet_b0``,
``tv:convnext_tiny``… are built by ``torchvision.models.get_model(name, weights=None,
num_classes=...)``. The last ``nn.Linear`` producing the logits becomes :meth:`head`, and the
network with that layer replaced by ``Identity`` becomes :meth:`features`. Grey images are repeated
to three channels; other channel counts are refused. Inputs are normalised with mean = std = 0.5
(the models are trained from scratch, so ImageNet statistics have no special meaning).

Weights of torchvision's own layout (``model.weights``: pretrained ImageNet weights, or any
``state_dict()`` of a ``torchvision.models`` network) load into it (:meth:`own_state`), and
``model.features`` names its layers as torchvision does (``layer4``).

Models with a fixed input size (``vit_*``, ``swin_*``, ``maxvit_t``) or without a final linear
layer (``squeezenet*``) are refused when built, with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torchvision
from torch import Tensor, nn

from perturbd.errors import ConfigError
from perturbd.models.base import Builder, Classifier, register_prefix
from perturbd.registry import suggest

# Builder options that make a model return one logits tensor with deterministic, warning-free init.
_EXTRA_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


class TorchvisionClassifier(Classifier):
    """A torchvision classifier split into ``body`` (features) and ``fc`` (its last linear layer)."""

    def __init__(self, tv_name: str, image_shape: Sequence[int], num_classes: int) -> None:
        super().__init__(image_shape, num_classes)
        channels = self.image_shape[0]
        if channels not in (1, 3):
            raise ConfigError(f"tv:{tv_name} takes 1 or 3 image channels, got {channels}; use cnn32 or preact_resnet18")
        net = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **_EXTRA_KWARGS.get(tv_name, {}))
        linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        if not linears or linears[-1][1].out_features != num_classes:
            raise ConfigError(
                f"tv:{tv_name} does not end in a linear layer, so it has no features/head split; "
                "choose another torchvision model, e.g. tv:resnet18"
            )
        path, fc = linears[-1]
        parent, _, child = path.rpartition(".")
        setattr(net.get_submodule(parent), child, nn.Identity())
        self.body = net
        self.fc = fc
        self.fc_path = path  # where torchvision's own state dict keeps the final layer

    def own_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A torchvision state dict (``conv1.weight`` … ``fc.bias``, as ``torchvision.models``
        writes it) in this model's keys (``body.conv1.weight`` … ``fc.bias``)."""
        if any(k.startswith("body.") for k in state):
            return state
        head = f"{self.fc_path}."
        return {(f"fc.{k[len(head) :]}" if k.startswith(head) else f"body.{k}"): v for k, v in state.items()}

    def normalize(self, x: Tensor) -> Tensor:
        x = super().normalize(x)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _resolve(tv_name: str) -> Builder:
    names = torchvision.models.list_models(module=torchvision.models)
    if tv_name not in names:
        close = suggest(f"tv:{tv_name}", [f"tv:{n}" for n in names]) if tv_name else ""
        if not close.startswith("; did you mean"):
            close = "; see torchvision.models.list_models() for the names"
        raise ConfigError(f"unknown torchvision model 'tv:{tv_name}'{close}")

    def build(image_shape: Sequence[int], num_classes: int) -> Classifier:
        return TorchvisionClassifier(tv_name, image_shape, num_classes)

    return build


register_prefix("tv", _resolve)
