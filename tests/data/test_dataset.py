"""ImageDataset and DataSplit: one-line DataErrors for bad shapes, dtypes and labels; subsets and
counts; the uint8 → float boundary."""

from __future__ import annotations

import pytest
import torch

from perturbd.data.dataset import DataSplit, ImageDataset, to_float01
from perturbd.errors import DataError

CLASSES = ("zero", "one", "two")


def dataset(n: int = 6, shape=(1, 4, 4), name: str = "toy") -> ImageDataset:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, *shape).clone()
    return ImageDataset(images, torch.arange(n) % 3, CLASSES, name)


@pytest.mark.parametrize(
    ("images", "labels", "classes", "message"),
    [
        (torch.zeros(4, 8, 8, dtype=torch.uint8), torch.zeros(4), CLASSES, r"toy: images must be \(N, C, H, W\), got shape \(4, 8, 8\)"),
        (torch.zeros(4, 1, 2, 2, dtype=torch.int32), torch.zeros(4), CLASSES, "toy: images must be uint8 or float32, got torch.int32"),
        (torch.zeros(4, 1, 2, 2, dtype=torch.float64), torch.zeros(4), CLASSES, "toy: images must be uint8 or float32, got torch.float64"),
        (
            torch.zeros(4, 1, 2, 2, dtype=torch.uint8),
            torch.zeros(3),
            CLASSES,
            r"toy: need one label per image, got \(3,\) labels for 4 images",
        ),
        (torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, 1), CLASSES, r"need one label per image, got \(4, 1\) labels"),
        (torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4), ("only",), "toy: a classifier needs at least 2 classes, got 1"),
        (
            torch.zeros(4, 1, 2, 2, dtype=torch.uint8),
            torch.tensor([0, 1, 2, 3]),
            CLASSES,
            r"toy: labels must lie in \[0, 2\], got \[0, 3\]",
        ),
        (torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, -1, 2, 1]), CLASSES, r"labels must lie in \[0, 2\], got \[-1, 2\]"),
    ],
)
def test_bad_data_is_a_one_line_data_error(images, labels, classes, message) -> None:
    with pytest.raises(DataError, match=message) as err:
        ImageDataset(images, labels.long(), classes, "toy")
    assert "\n" not in str(err.value)


def test_labels_become_int64_and_an_empty_set_is_allowed() -> None:
    data = ImageDataset(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 2, 1], dtype=torch.int32), CLASSES)
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == [0, 2, 1] and data.name == "data"
    empty = ImageDataset(torch.zeros(0, 3, 5, 5), torch.zeros(0, dtype=torch.long), CLASSES)
    assert len(empty) == 0 and empty.image_shape == (3, 5, 5) and empty.counts().tolist() == [0, 0, 0]


def test_shape_class_count_and_counts() -> None:
    data = dataset(7, shape=(3, 5, 4))
    assert len(data) == 7 and data.image_shape == (3, 5, 4) and data.num_classes == 3
    assert data.counts().tolist() == [3, 2, 2]
    assert ImageDataset(data.images[:2], torch.tensor([0, 0]), CLASSES).counts().tolist() == [2, 0, 0]  # every class counted


def test_subset_is_a_copy_and_leaves_the_original_alone() -> None:
    data = dataset(6)
    before = data.images.clone()
    part = data.subset(torch.tensor([4, 1]))
    assert part.images[:, 0, 0, 0].tolist() == [4, 1] and part.labels.tolist() == [1, 1]
    assert part.classes == CLASSES and part.name == "toy"
    part.images[0] = 255
    assert torch.equal(data.images, before)
    mask = data.labels == 0
    assert data.subset(mask).images[:, 0, 0, 0].tolist() == [0, 3]  # a boolean mask works too


def test_with_images_keeps_labels_and_classes_and_is_checked() -> None:
    data = dataset(6)
    floats = to_float01(data.images)
    other = data.with_images(floats)
    assert other.images is floats and torch.equal(other.labels, data.labels) and other.classes == data.classes
    assert data.images.dtype == torch.uint8  # the original is unchanged (frozen)
    with pytest.raises(DataError, match="one label per image"):
        data.with_images(data.images[:3])
    with pytest.raises(AttributeError):
        data.images = floats  # type: ignore[misc]


def test_to_float01() -> None:
    u8 = torch.tensor([0, 51, 255], dtype=torch.uint8)
    out = to_float01(u8)
    assert out.dtype == torch.float32 and out.tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert u8.tolist() == [0, 51, 255]  # the input is not divided in place
    f64 = torch.tensor([0.25], dtype=torch.float64)
    assert to_float01(f64).dtype == torch.float32 and to_float01(f64).item() == 0.25  # floats pass through as float32
    with pytest.raises(TypeError, match="images must be uint8 or floating point, got torch.int64"):
        to_float01(torch.tensor([1, 2]))


def test_split_needs_the_same_shape_and_classes() -> None:
    train, test = dataset(6), dataset(3)
    assert DataSplit(train, test).test is test
    with pytest.raises(DataError, match=r"train and test images differ in shape: \(1, 4, 4\) vs \(1, 5, 5\)"):
        DataSplit(train, dataset(3, shape=(1, 5, 5)))
    renamed = ImageDataset(test.images, test.labels, ("a", "b", "c"))
    with pytest.raises(DataError, match="train and test sets have different class names"):
        DataSplit(train, renamed)
