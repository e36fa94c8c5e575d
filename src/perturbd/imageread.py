"""Image files read from their header first: :func:`open_image` refuses an image of more than
:data:`perturbd.limits.MAX_IMAGE_PIXELS` pixels before a byte of it is decoded."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from PIL import Image

from perturbd.errors import DataError
from perturbd.limits import MAX_IMAGE_PIXELS


@contextmanager
def open_image(path: Path | str | IO[bytes], what: str, shown: object = None) -> Iterator[Image.Image]:
    """``Image.open`` (lazy: only the header is read) with its size checked before anything is
    decoded: a :class:`DataError` naming ``what`` and the file when it has more than
    :data:`MAX_IMAGE_PIXELS` pixels. Pillow's own bomb error and warning become that line too."""
    name = shown if shown is not None else path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as err:  # Pillow's own bound, far above ours: name the size it read
            found = re.search(r"\((\d+) pixels\)", str(err))
            raise DataError(_too_large(what, name, int(found.group(1)) if found else None)) from None
    with img:
        width, height = img.size
        if width * height > MAX_IMAGE_PIXELS:
            raise DataError(_too_large(what, name, width * height, f"{width}×{height} = "))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield img


def _too_large(what: str, name: object, pixels: int | None, dims: str = "") -> str:
    shown = f"{dims}{pixels:,} pixels" if pixels is not None else f"over {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels"
    return (
        f"{what} {name} is too large ({shown}); perturbd reads images of at most {MAX_IMAGE_PIXELS:,} pixels (e.g. 8192×8192): downscale it"
    )


def several_frames(name: object, frames: int) -> str:
    """The one line for a file of several frames (an animation, a multi-page TIFF): not one image."""
    return f"{name} holds {frames} frames (an animation or a multi-page file), not one image; save one frame per file"


def one_frame(img: Image.Image, name: object, error: type[Exception] = DataError) -> None:
    """Raise ``error`` (:func:`several_frames`'s line) if ``img`` holds more than one frame."""
    frames = int(getattr(img, "n_frames", 1))
    if frames > 1:
        raise error(several_frames(name, frames))
