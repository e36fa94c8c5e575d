"""Model registry: small CNNs for 28×28 and 32×32 images, PreAct-ResNet-18, torchvision models.

Every model is a :class:`Classifier` taking float images in [0, 1] (normalised inside), with a
``features`` (penultimate activations) / ``head`` (logits) split for defences.

Example::

    import torch
    from perturbd.models import build_from_checkpoint, get_model, list_models, save_model

    list_models()  # ['cnn28', 'cnn32', 'cnn32_small', 'fastnet32', 'fastnet32_small', 'lenet5', 'lenet5_valid', 'preact_resnet18']
    torch.manual_seed(0)  # same seed, same initial weights
    model = get_model("auto", image_shape=(1, 28, 28), num_classes=10)  # cnn28
    save_model(model, "model.safetensors", {"seed": "0"})
    same = build_from_checkpoint("model.safetensors")

A new architecture is one file in this package with a builder registered by ``@register_model``
and one import line below. A network perturbd did not build (``torchscript:PATH``,
``factory:package.module:function``, ``tv:<name>`` with ``model.weights``) is built from the
config's model section by :func:`build_model` (:mod:`perturbd.models.external`); one in memory is
handed over with :func:`wrap` (:mod:`perturbd.models.wrap`).
"""

from perturbd.models.base import (
    MODELS,
    Classifier,
    default_model_name,
    frozen,
    get_model,
    list_models,
    model_device,
    register_model,
    register_prefix,
)
from perturbd.models.checkpoint import build_from_checkpoint, checkpoint_metadata, is_checkpoint, load_model_weights, save_model
from perturbd.models.external import ExternalModel, build_model, register_factory
from perturbd.models.wrap import model_section, register_module, wrap

# Architectures register themselves on import.
from perturbd.models import fastnet, lenet, preact_resnet, small, tv, vgg, whitenet  # noqa: F401  isort: skip

__all__ = [
    "MODELS",
    "Classifier",
    "ExternalModel",
    "build_from_checkpoint",
    "build_model",
    "checkpoint_metadata",
    "default_model_name",
    "frozen",
    "get_model",
    "is_checkpoint",
    "list_models",
    "load_model_weights",
    "model_device",
    "model_section",
    "register_factory",
    "register_model",
    "register_module",
    "register_prefix",
    "save_model",
    "wrap",
]
