"""``imagefolder:PATH``: a user's own images in class folders.

Layout::

    PATH/train/<class>/*.png|jpg|…      class folders sorted by name give the labels 0, 1, …
    PATH/test/<class>/*.png|jpg|…       the same class folders as train

All images must have the same height × width. If any image is colour, every image is converted
to RGB (3 channels); otherwise they stay grey (1 channel). Alpha channels are dropped; 16-bit
images are scaled to 8 bits. Files whose suffix is not an image suffix, and hidden files, are
ignored. Images are uint8 in pixel units 0–255.

Decoding is done once: the tensors are cached in the cache folder (see
:func:`perturbd.data.sources.cache_dir`) under a hash of the resolved PATH and every file's
relative name, size and mtime, so a changed, added or removed file decodes the folder again.
JPEGs are decoded in batches by ``torchvision.io``, PNG/GIF/WebP one by one by it, other
formats (BMP, TIFF, PNM) by Pillow, in a thread pool (the decoders release the GIL).
``torchvision.io`` decoding is deprecated since torchvision 0.29 (in favour of TorchCodec); if
it disappears, Pillow decodes everything.
"""

from __future__ import annotations

import functools
import io
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import UnidentifiedImageError

from perturbd.data.dataset import DataSplit
from perturbd.data.sources import SourceRequest, cache_file, make_split, read_cache, register_source, write_cache
from perturbd.errors import DataError
from perturbd.imageread import one_frame, open_image, several_frames

try:  # torchvision's decoders are faster than Pillow's; deprecated since 0.29, so perhaps gone one day
    import torchvision.io as tvio
except ImportError:
    tvio = None

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
TORCHVISION_SUFFIXES = frozenset({".png", ".gif", ".webp"}) | JPEG_SUFFIXES
SPLITS = ("train", "test")
CHUNK = 512  # files read and decoded by one worker task (JPEGs in one batched call)
HOW = "PATH must hold train/<class>/<images> and test/<class>/<images>"


class ImageFile(NamedTuple):
    rel: str  # path relative to the image folder, '/'-separated: "train/cat/001.png"
    label: int
    size: int  # bytes
    mtime_ns: int


Listing = dict[str, list[ImageFile]]  # split -> files in label, then name order


def _folder(req: SourceRequest) -> Path:
    return Path(req.arg or "").expanduser().resolve()


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _suffix(name: str) -> str:
    """``".png"`` for ``"a/b.PNG"``; ``""`` without a dot (cheaper than ``os.path.splitext``)."""
    base, dot, ext = name.rpartition(".")
    return f".{ext.lower()}" if dot and base and "/" not in ext else ""


def _image_files(root: Path, rel_dir: str, label: int) -> list[ImageFile]:
    """Regular image files in ``root/rel_dir`` (hidden ones and other suffixes skipped), by name.

    Plain strings, not :class:`Path`: a folder may hold tens of thousands of files.
    """
    out = []
    for entry in sorted(os.scandir(root / rel_dir), key=lambda e: e.name):
        if entry.name.startswith(".") or _suffix(entry.name) not in IMAGE_SUFFIXES:
            continue
        try:
            st = entry.stat()
        except OSError as err:  # e.g. a broken symbolic link
            raise DataError(f"imagefolder: cannot read {rel_dir}/{entry.name} in {root} ({err.strerror}); fix or remove it") from err
        if stat.S_ISREG(st.st_mode):
            out.append(ImageFile(f"{rel_dir}/{entry.name}", label, st.st_size, st.st_mtime_ns))
    return out


def list_folder(path: Path) -> tuple[tuple[str, ...], Listing]:
    """Class names and the image files of each split; DataError if the layout is wrong."""
    if not path.is_dir():
        raise DataError(f"imagefolder: no folder at {path}; write imagefolder:PATH where {HOW}")
    classes: dict[str, list[str]] = {}
    for split in SPLITS:
        if not (path / split).is_dir():
            raise DataError(f"imagefolder {path} has no '{split}' folder; {HOW}")
        classes[split] = _class_dirs(path / split)
        if not classes[split]:
            raise DataError(f"imagefolder {path / split} has no class folders; put each class's images in {split}/<class>/")
    if classes["train"] != classes["test"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"])) or "none"
        only_test = sorted(set(classes["test"]) - set(classes["train"])) or "none"
        raise DataError(
            f"imagefolder {path}: train and test hold different class folders (only in train: {only_train}, "
            f"only in test: {only_test}); give both the same class folders"
        )
    listing: Listing = {}
    for split in SPLITS:
        listing[split] = []
        for label, name in enumerate(classes[split]):
            files = _image_files(path, f"{split}/{name}", label)
            if not files:
                raise DataError(
                    f"imagefolder {path / split / name} holds no image files "
                    f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder"
                )
            listing[split].extend(files)
    return tuple(classes["train"]), listing


def _cache_key(path: Path, listing: Listing) -> Path:
    stamps = tuple(f for split in SPLITS for f in listing[split])  # (rel, label, size, mtime_ns)
    return cache_file("imagefolder", str(path), stamps)


# --------------------------------------------------------------------------- decoding


def _read_bytes(root: Path, rel: str) -> torch.Tensor:
    try:
        with open(os.path.join(root, rel), "rb") as fh:
            data = bytearray(fh.read())
    except OSError as err:
        raise DataError(f"imagefolder: cannot read {rel} in {root} ({err.strerror}); check its permissions") from err
    # an empty file becomes one zero byte (torch.frombuffer refuses empty buffers): it fails to decode
    return torch.frombuffer(data or bytearray(1), dtype=torch.uint8)


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` uint8 with C in {1, 3}: alpha dropped, 16-bit scaled down to 8 bits."""
    if image.dtype != torch.uint8:
        image = (image.to(torch.int32) // 257).clamp(0, 255).to(torch.uint8)
    channels = image.shape[0]
    return image[:1] if channels == 2 else image[:3] if channels == 4 else image


class _Frames(DataError):
    """A file of several frames (an animation, a multi-page TIFF): not one image."""


def _check_header(root: Path, rel: str, data: torch.Tensor) -> None:
    """A :class:`DataError` when the header of ``rel`` gives more pixels than perturbd reads;
    a file Pillow cannot identify is left to the decoder to name."""
    try:
        with open_image(io.BytesIO(data.numpy().tobytes()), "imagefolder: image", f"{rel} in {root}"):
            pass
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        pass  # the decoder names a file it cannot read


def _decode_pil(data: torch.Tensor, rel: str = "") -> torch.Tensor:
    """Pillow decoding: grey modes stay 1 channel (16-bit scaled to 8 bits), the rest become RGB."""
    with open_image(io.BytesIO(data.numpy().tobytes()), "image") as im:
        one_frame(im, rel, _Frames)
        if im.mode.startswith("I"):  # 16-bit (or 32-bit integer) grey, read as 0–65535
            array = (np.asarray(im, dtype=np.int64).clip(0, 65535) // 257).astype(np.uint8)
        else:
            array = np.array(im.convert("L" if im.mode in ("1", "L", "LA", "F") else "RGB"))
    tensor = torch.from_numpy(array)
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def _png_palette(data: torch.Tensor) -> bool:
    """Whether ``data`` is a PNG with a colour palette (IHDR colour type 3)."""
    head = bytes(data[:26].tolist())
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[25] == 3


@functools.cache
def _torchvision_io() -> Any:
    """``torchvision.io`` if it still decodes images (deprecated since 0.29), else ``None``: Pillow."""
    if tvio is None:
        return None
    return tvio if all(hasattr(tvio, f) for f in ("decode_image", "decode_jpeg", "ImageReadMode")) else None


def _decode_one(rel: str, data: torch.Tensor) -> torch.Tensor:
    tvio = _torchvision_io()
    if tvio is None or _suffix(rel) not in TORCHVISION_SUFFIXES:
        return _decode_pil(data, rel)
    if _png_palette(data):  # UNCHANGED would give palette indices: expand, and keep grey palettes grey
        image: torch.Tensor = tvio.decode_image(data, mode=tvio.ImageReadMode.RGB)  # torchvision is untyped here
        return image[:1] if bool((image[0] == image[1]).all() and (image[1] == image[2]).all()) else image
    image = tvio.decode_image(data, mode=tvio.ImageReadMode.UNCHANGED)
    if image.ndim == 4:  # an animated GIF: (frames, C, H, W)
        raise _Frames(several_frames(rel, image.shape[0]))
    if image.shape[0] == 4 and _suffix(rel) in JPEG_SUFFIXES:  # CMYK: let the decoder convert
        image = tvio.decode_image(data, mode=tvio.ImageReadMode.RGB)
    return _to_uint8(image)


def _decode_chunk(root: Path, rels: list[str]) -> list[torch.Tensor]:
    """Read and decode a few files: JPEGs in one batched call, the others one by one."""
    tvio = _torchvision_io()
    blobs = [_read_bytes(root, rel) for rel in rels]
    for rel, blob in zip(rels, blobs):
        _check_header(root, rel, blob)
    out: list[torch.Tensor | None] = [None] * len(rels)
    jpegs = [i for i, rel in enumerate(rels) if _suffix(rel) in JPEG_SUFFIXES] if tvio is not None else []
    if jpegs:
        try:
            decoded = tvio.decode_jpeg([blobs[i] for i in jpegs], mode=tvio.ImageReadMode.UNCHANGED)
        except RuntimeError:
            decoded = [None] * len(jpegs)  # one bad file spoils the batch: decode one by one to name it
        for i, image in zip(jpegs, decoded):
            out[i] = image if image is not None and image.shape[0] in (1, 3) else None
    for i, rel in enumerate(rels):
        if out[i] is None:
            try:
                out[i] = _decode_one(rel, blobs[i])
            except _Frames as err:
                raise DataError(f"imagefolder: {err} (in {root})") from None
            except (RuntimeError, OSError, ValueError, SyntaxError) as err:  # PIL raises SyntaxError too
                reason = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
                if reason.startswith("cannot identify image file"):  # Pillow names a BytesIO object
                    reason = "not a recognised image format"
                raise DataError(f"imagefolder: cannot decode {rel} in {root} ({reason}); replace or remove the file") from err
    return out  # type: ignore[return-value]


def decode_files(root: Path, rels: list[str]) -> list[torch.Tensor]:
    """Decode the files ``root/rel`` to ``(C, H, W)`` uint8 tensors, C in {1, 3}, in a thread
    pool (the decoders release the GIL); DataError naming the first bad file."""
    chunks = [rels[i : i + CHUNK] for i in range(0, len(rels), CHUNK)]
    workers = min(8, os.cpu_count() or 1, len(chunks))
    if workers <= 1:
        return [image for chunk in chunks for image in _decode_chunk(root, chunk)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [image for part in pool.map(_decode_chunk, [root] * len(chunks), chunks) for image in part]


def _decode_all(path: Path, classes: tuple[str, ...], listing: Listing, name: str) -> DataSplit:
    """Decode every file of both splits into one split; all images must share H × W."""
    images = {s: decode_files(path, [f.rel for f in listing[s]]) for s in SPLITS}
    first_rel, first = listing["train"][0].rel, images["train"][0]
    colour = False
    for split in SPLITS:
        for f, image in zip(listing[split], images[split]):
            if image.shape[1:] != first.shape[1:]:
                raise DataError(
                    f"imagefolder {path}: images differ in size: {first_rel} is "
                    f"{first.shape[1]}×{first.shape[2]} but {f.rel} is {image.shape[1]}×{image.shape[2]} "
                    f"(height × width); resize all images to one size"
                )
            colour = colour or image.shape[0] == 3
    channels = 3 if colour else 1
    stacked = {s: torch.stack([im.expand(channels, -1, -1) for im in images[s]]) for s in SPLITS}
    labels = {s: torch.tensor([f.label for f in listing[s]], dtype=torch.long) for s in SPLITS}
    return make_split(name, stacked["train"], labels["train"], stacked["test"], labels["test"], classes)


def _status(req: SourceRequest) -> str:
    if not req.arg:
        return "needs a folder: write imagefolder:PATH"
    path = _folder(req)
    if not path.is_dir():
        return f"missing: no folder at {path}"
    try:
        classes, listing = list_folder(path)
    except DataError as err:
        return f"unusable: {str(err).removeprefix('imagefolder ')}"
    return f"present ({len(listing['train']):,} + {len(listing['test']):,} image files, {len(classes)} classes)"


@register_source("imagefolder", status=_status, param="PATH", summary="your images in PATH/{train,test}/<class>/")
def imagefolder(req: SourceRequest) -> DataSplit:
    """Images from ``PATH/train/<class>/`` and ``PATH/test/<class>/``, decoded once and cached."""
    path = _folder(req)
    classes, listing = list_folder(path)
    cache = _cache_key(path, listing)
    split = read_cache(cache, req.name)
    if split is None:
        split = _decode_all(path, classes, listing, req.name)
        write_cache(cache, split)
    return split
