"""The one in-memory image data type: uint8 tensors ``(N, C, H, W)`` with labels and class names."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from perturbd.errors import DataError


def to_float01(images: torch.Tensor) -> torch.Tensor:
    """Convert images to float32 in [0, 1]: uint8 is divided by 255, floats pass through.

    This is the one boundary between stored pixels (uint8, 0–255) and model inputs.
    """
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.is_floating_point():
        return images.float()
    raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Images as float64 in 0–255 pixel units (uint8 exactly; float [0, 1] through
    :func:`to_float01`, scaled by 255): the scale of every distortion measure."""
    if images.dtype == torch.uint8:
        return images.double()
    return to_float01(images).double() * 255.0


@dataclass(frozen=True)
class ImageDataset:
    """Images, labels and class names.

    Attributes:
        images: ``(N, C, H, W)`` uint8 in 0–255 (or float32 in [0, 1] for unquantized poison).
        labels: ``(N,)`` int64 in ``[0, len(classes))``.
        classes: class names, index = label.
        name: where the data came from, for logs and reports.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str = "data"

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DataError(f"{self.name}: images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.images.dtype != torch.uint8 and self.images.dtype != torch.float32:
            raise DataError(f"{self.name}: images must be uint8 or float32, got {self.images.dtype}")
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise DataError(f"{self.name}: need one label per image, got {tuple(self.labels.shape)} labels for {len(self.images)} images")
        if self.labels.dtype != torch.int64:
            object.__setattr__(self, "labels", self.labels.long())
        if len(self.classes) < 2:
            raise DataError(f"{self.name}: a classifier needs at least 2 classes, got {len(self.classes)}")
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise DataError(
                f"{self.name}: labels must lie in [0, {len(self.classes) - 1}], got [{int(self.labels.min())}, {int(self.labels.max())}]"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: torch.Tensor) -> ImageDataset:
        """The images at ``indices`` (a copy; the original is untouched)."""
        return replace(self, images=self.images[indices], labels=self.labels[indices])

    def with_images(self, images: torch.Tensor) -> ImageDataset:
        """The same labels and classes with other images of the same count."""
        return replace(self, images=images)

    def counts(self) -> torch.Tensor:
        """Images per class, ``(num_classes,)``."""
        return torch.bincount(self.labels, minlength=self.num_classes)


@dataclass(frozen=True)
class DataSplit:
    """A training set and a test set of the same image shape and classes."""

    train: ImageDataset
    test: ImageDataset

    def __post_init__(self) -> None:
        if self.train.image_shape != self.test.image_shape:
            raise DataError(f"train and test images differ in shape: {self.train.image_shape} vs {self.test.image_shape}")
        if self.train.classes != self.test.classes:
            raise DataError("train and test sets have different class names")
