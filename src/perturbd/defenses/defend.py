"""One defence on a model and data already in memory: :func:`defend` (``perturbd.defend``).

The Python counterpart of ``perturbd defend`` for a model object and arrays, in ART's manner
(``defence(classifier, x, y)``): the model is wrapped (:func:`~perturbd.models.wrap`) unless it is
a perturbd model already, the arrays become an :class:`~perturbd.data.ImageDataset`
(:func:`~perturbd.data.arrays.as_dataset`), and the defence is built, fitted and returned, its
results in the attributes that end in ``_`` (``scores_``, ``flagged_``, ``model_``, …, per kind:
:mod:`perturbd.defenses.base`). Nothing is written to disk; for the measured report of a run
(ASR after mitigation, detection AUROC) use ``perturbd.run`` with ``defenses`` in the config.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from perturbd.config import TrainConfig
from perturbd.data.arrays import as_dataset
from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import Defense, build_defense
from perturbd.errors import ConfigError, DataError
from perturbd.models import Classifier, wrap


def defend(
    model: nn.Module,
    data: Any,
    defense: str | Defense,
    *,
    before: nn.Module | None = None,
    train: TrainConfig | None = None,
    **params: Any,
) -> Defense:
    """Fit the defence ``defense`` on ``model`` with ``data``; return the fitted defence.

    Args:
        model: a perturbd model (:func:`~perturbd.models.wrap`, :func:`~perturbd.models.get_model`,
            a run's model) or a plain ``nn.Module``, which is wrapped for the data's image shape
            taking float images in [0, 1] without normalisation (wrap it yourself to state
            another input range, a normalisation or the feature layer).
        data: an :class:`~perturbd.data.ImageDataset`, ``(images, labels)``, or images alone
            for input screening (STRIP reads no labels). Images: numpy arrays or torch tensors,
            ``(N, C, H, W)``, ``(N, H, W, C)`` or ``(N, H, W)``, uint8 0–255 or float in [0, 1]
            (rounded to 8 bits). What ``data`` is depends on the kind: clean images the defender
            holds (input and model inspection, mitigation, update audit), the training set
            to screen (dataset screening) or to train on, poison and all (training-time).
        defense: a registered name (``perturbd.defenses.list_defenses()``) or a built defence.
        before: for an update audit (``update_audit``), the model before the update.
        train: for a training-time defence (``abl``), the recipe it trains with
            (:class:`~perturbd.config.TrainConfig`); ``model`` is then the untrained model whose
            weights it starts from (copied), not a trained one.
        **params: the defence's parameters (its ``Params``), validated before any work.

    Returns:
        The fitted defence (``fit`` returns it).

    Raises:
        ConfigError, DataError: one line: an unknown defence or parameter, data of another
            shape than the model's, labels a defence needs but was not given.

    Example:
        >>> import perturbd, torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
        >>> x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
        >>> strip = perturbd.defend(net, x, "strip", overlays=8, seed=0)
        >>> strip.flag(x[:4]).shape
        torch.Size([4])
    """
    if isinstance(defense, Defense):
        if params:
            raise ConfigError(f"defend() got a built defence and parameters {sorted(params)}; give the parameters when building it")
        built = defense
    elif isinstance(defense, str):
        built = build_defense(defense, **params)
    else:
        got = type(defense).__name__
        raise ConfigError(f"defense must be a defence name (see perturbd.defenses.list_defenses()) or a built one, got {got}")
    if built.kind == "update" and before is None:
        raise ConfigError(f"defense '{built.name}' audits an update: give the model before it, defend(model, data, ..., before=old)")
    if built.kind != "update" and before is not None:
        raise ConfigError(f"defense '{built.name}' takes no before= model (only an update audit does)")
    if built.kind == "training" and train is None:
        raise ConfigError(
            f"defense '{built.name}' trains a model on the poisoned training set and cannot repair a trained model alone: give "
            f"defend(untrained_model, (x_train, y_train), '{built.name}', train=TrainConfig(...))"
        )
    if built.kind != "training" and train is not None:
        raise ConfigError(f"defense '{built.name}' takes no train= recipe (only a training-time defence does)")
    images = data.images if isinstance(data, ImageDataset) else data[0] if isinstance(data, (tuple, list)) else data
    shape = _image_shape(images)
    wrapped = _as_model(model, shape, "model")
    dataset = _as_data(data, wrapped.num_classes, built)
    if dataset.image_shape != wrapped.image_shape:
        raise DataError(
            f"the data's images are {dataset.image_shape} (C, H, W) but the model takes {wrapped.image_shape}; "
            "give images of the model's shape"
        )
    if before is not None:
        result: Defense = built.fit(wrapped, dataset, before=_as_model(before, wrapped.image_shape, "before"))
        return result
    if train is not None:
        result = built.fit(wrapped, dataset, train)
        return result
    result = built.fit(wrapped, dataset)
    return result


def _image_shape(images: Any) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of images in any layout :func:`as_dataset` takes; None when it cannot tell (it says why)."""
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) == 3:
        return (1, shape[1], shape[2])
    if len(shape) == 4:
        return (shape[1], shape[2], shape[3]) if shape[1] in (1, 3) else (shape[3], shape[1], shape[2])
    return None


def _as_model(model: nn.Module, shape: tuple[int, int, int] | None, what: str) -> Classifier:
    if isinstance(model, Classifier):
        return model
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{what} must be a torch.nn.Module (or perturbd.wrap(...) of one), got {type(model).__name__}")
    if shape is None:
        raise DataError("data must be images (N, C, H, W), (N, H, W, C) or (N, H, W), (images, labels) or an ImageDataset")
    return wrap(model, shape)


def _as_data(data: Any, num_classes: int, defense: Defense) -> ImageDataset:
    if isinstance(data, ImageDataset):
        if data.num_classes > num_classes:
            raise DataError(f"the data has {data.num_classes} classes but the model gives {num_classes} logits; give the model's data")
        return data
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise DataError(f"data as a tuple is (images, labels), got {len(data)} items")
        return as_dataset(data[0], data[1], num_classes=num_classes)
    if defense.kind != "input":
        raise DataError(f"defense '{defense.name}' needs labels: give data as (images, labels)")
    return as_dataset(data, None, num_classes=num_classes)
