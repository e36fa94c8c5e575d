"""Fixtures for the data layer tests: a private cache folder and tiny image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point $PERTURBD_CACHE at a fresh folder so no test writes to the home cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("PERTURBD_CACHE", str(folder))
    return folder


def write_image(path: Path, array: np.ndarray) -> Path:
    """Save a uint8 (H, W) or (H, W, 3) array as an image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def make_folder(tmp_path: Path):
    """Factory: an image folder ``root/{train,test}/<class>/NN.png`` with known pixels.

    Image ``i`` of class ``c`` is filled with the grey level ``10 * c + i`` (or that level in
    every channel when ``rgb``); returns the root.
    """

    def make(classes=("b_cat", "a_dog"), per_class=(3, 2), size=(6, 5), rgb=False, suffix=".png") -> Path:
        root = tmp_path / "folder"
        for split, n in zip(("train", "test"), per_class):
            for c, name in enumerate(classes):
                for i in range(n):
                    level = 10 * c + i + (100 if split == "test" else 0)
                    shape = (*size, 3) if rgb else size
                    write_image(root / split / name / f"{i:02d}{suffix}", np.full(shape, level, np.uint8))
        return root

    return make
