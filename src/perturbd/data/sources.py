"""The data source registry, the tensor cache and :func:`load_data`.

A *source* turns a name from ``data.name`` into a :class:`~perturbd.data.dataset.DataSplit` of
uint8 ``(N, C, H, W)`` images (pixel units 0–255). Sources register themselves where they are
defined with :func:`register_source`; a parametrised source (``imagefolder:PATH``, ``npz:PATH``)
receives the text after the first ``':'`` as ``request.arg``.

Sources that convert or decode files keep the result as a ``.pt`` file of plain tensors in the
cache folder (``$PERTURBD_CACHE``, else ``~/.cache/perturbd/cache/``), never next to the data,
which may be read-only. Cache files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from perturbd.config import DataConfig
from perturbd.data.dataset import DataSplit, ImageDataset
from perturbd.errors import ConfigError, DataError
from perturbd.registry import Registry
from perturbd.seeding import derived_generator

log = logging.getLogger(__name__)

CACHE_ENV = "PERTURBD_CACHE"
DEFAULT_CACHE = Path("~/.cache/perturbd/cache")
CACHE_FORMAT = 1  # bump when the layout of cache files changes


@dataclass(frozen=True)
class SourceRequest:
    """What a source is asked to load.

    Attributes:
        name: the full name as typed, e.g. ``"mnist"`` or ``"imagefolder:~/pets"``.
        arg: the text after the first ``':'`` for parametrised sources, else ``None``.
        root: folder holding downloaded data sets (``data.root``, ``~`` expanded).
        download: whether a missing torchvision data set may be downloaded.
    """

    name: str
    arg: str | None
    root: Path
    download: bool = False


Loader = Callable[[SourceRequest], DataSplit]
StatusFn = Callable[[SourceRequest], str]


@dataclass(frozen=True)
class Source:
    """A registered data source.

    Attributes:
        name: registry key (the part before ``':'``).
        load: builds the split; raises :class:`DataError` on missing or bad data.
        status: one short line for ``perturbd datasets``; must not download nor decode.
        param: placeholder of the argument for parametrised sources (``"PATH"``), else ``None``.
        summary: one line describing the data.
    """

    name: str
    load: Loader
    status: StatusFn
    param: str | None = None
    summary: str = ""

    @property
    def display(self) -> str:
        """The name as users write it: ``"mnist"`` or ``"imagefolder:PATH"``."""
        return f"{self.name}:{self.param}" if self.param else self.name


SOURCES: Registry[Source] = Registry("data source")


def register_source(name: str, *, status: StatusFn, param: str | None = None, summary: str = "") -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(request) -> DataSplit`` as the source ``name``.

    Example::

        @register_source("tiny", status=lambda req: "embedded", summary="two classes")
        def tiny(req: SourceRequest) -> DataSplit: ...
    """
    if ":" in name:
        raise ValueError(f"source names cannot contain ':', got '{name}'")

    def add(loader: Loader) -> Loader:
        SOURCES.register(name)(Source(name, loader, status, param, summary))
        return loader

    return add


def get_source(name: str) -> tuple[Source, str | None]:
    """The source for a full name and its argument: ``"npz:a.npz"`` → (npz source, ``"a.npz"``).

    Raises :class:`ConfigError` for an unknown name (with a suggestion), a parametrised source
    without its argument, or an argument given to a source that takes none.
    """
    base, sep, arg = name.partition(":")
    source = SOURCES.get(base.strip())
    if source.param and not arg.strip():
        raise ConfigError(f"data source '{base}' needs a {source.param.lower()}: write '{source.display}', got '{name}'")
    if sep and not source.param:
        raise ConfigError(f"data source '{base}' takes no ':' argument, got '{name}'; write '{base}'")
    return source, (arg.strip() if source.param else None)


def list_sources(pattern: str = "*") -> list[str]:
    """Registered source names matching the shell-style ``pattern``, sorted.

    Parametrised sources are shown as users write them: ``'imagefolder:PATH'``, ``'npz:PATH'``.
    """
    shown = [SOURCES.get(key).display for key in SOURCES.names()]
    return [s for s in shown if fnmatch.fnmatch(s, pattern) or fnmatch.fnmatch(s.split(":")[0], pattern)]


def source_status(name: str, root: Path) -> str:
    """One short line about a source under ``root``: ``"present (60,000 + 10,000 images)"``,
    ``"missing: …"`` with how to get it, or ``"embedded (…)"``. Never downloads nor decodes.

    The listed form of a parametrised source (``"npz:PATH"``) gives ``"needs a path: …"``.
    """
    source, arg = get_source(name)
    if source.param and arg == source.param:
        return f"needs a {source.param.lower()}: {source.summary}"
    return source.status(SourceRequest(name, arg, Path(root).expanduser(), download=False))


# --------------------------------------------------------------------------- loading


def load_data(cfg: DataConfig, seed: int = 0) -> DataSplit:
    """Load the data set named by ``cfg.name`` as uint8 ``(N, C, H, W)`` images.

    ``cfg.train_limit`` / ``cfg.test_limit`` keep a stratified random subset of that many images
    (per-class counts proportional to the full set, largest remainders first), drawn with
    ``seed``; the kept images stay in their original order and the class list is unchanged.

    Raises:
        ConfigError: unknown or malformed source name.
        DataError: missing, corrupt or badly shaped data.
    """
    source, arg = get_source(cfg.name)
    split = source.load(SourceRequest(cfg.name, arg, Path(cfg.root).expanduser(), cfg.download))
    unseen = _unseen_labels(split.train, split.test)
    if unseen:
        raise DataError(
            f"{split.test.name}: the test set has label(s) {_some(unseen)} that no training image has; "
            "a model cannot learn them: add training images of these classes or drop them from the test set"
        )
    train = _limit(split.train, cfg.train_limit, derived_generator(seed, "train", namespace="limit"))
    test = _limit(split.test, cfg.test_limit, derived_generator(seed, "test", namespace="limit"))
    unseen = _unseen_labels(train, test)
    if unseen:
        log.warning(
            "data.train_limit=%d keeps no training image of test label(s) %s: their test images count as errors; raise the limit",
            cfg.train_limit,
            _some(unseen),
        )
    return split if (train is split.train and test is split.test) else DataSplit(train, test)


def _unseen_labels(train: ImageDataset, test: ImageDataset) -> list[int]:
    """Labels of ``test`` that no image of ``train`` has, ascending."""
    seen = torch.bincount(train.labels, minlength=train.num_classes) > 0
    present = torch.bincount(test.labels, minlength=test.num_classes) > 0
    return [int(c) for c in (present & ~seen[: len(present)]).nonzero().flatten()]


def _some(labels: list[int]) -> str:
    return ", ".join(map(str, labels[:10])) + (f" (and {len(labels) - 10} more)" if len(labels) > 10 else "")


def _limit(data: ImageDataset, limit: int | None, generator: torch.Generator) -> ImageDataset:
    if limit is None or limit >= len(data):
        if limit is not None and limit > len(data):
            log.warning("%s has %d images, fewer than the limit %d: keeping all", data.name, len(data), limit)
        return data
    return data.subset(stratified_indices(data.labels, limit, generator, data.num_classes))


def stratified_indices(labels: torch.Tensor, n: int, generator: torch.Generator, num_classes: int | None = None) -> torch.Tensor:
    """Sorted indices of a random subset of ``n`` samples with class proportions kept.

    Each class gets ``floor(n * count / total)`` samples; the ``n - sum`` left over go to the
    classes with the largest remainders (ties broken at random). Exact per-class counts:
    balanced data with ``n`` a multiple of the class count gives ``n / K`` per class.
    Not scikit-learn's split: same counts, but its numpy generator draws other images.
    """
    total = len(labels)
    if not 0 <= n <= total:
        raise ValueError(f"subset size must be in [0, {total}], got {n}")
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    k = num_classes if num_classes is not None else int(labels.max()) + 1 if total else 0
    counts = torch.bincount(labels, minlength=k).tolist()
    quota = [c * n // total for c in counts]
    remainder = [c * n % total for c in counts]
    tiebreak = torch.rand(k, generator=generator).tolist()
    by_remainder = sorted(range(k), key=lambda c: (-remainder[c], tiebreak[c]))
    for c in by_remainder[: n - sum(quota)]:
        quota[c] += 1
    picked = []
    for c in range(k):
        members = (labels == c).nonzero().squeeze(1)
        picked.append(members[torch.randperm(len(members), generator=generator)[: quota[c]]])
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)


def make_split(
    name: str,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    classes: Sequence[str],
) -> DataSplit:
    """A :class:`DataSplit` named ``name`` from uint8 ``(N, C, H, W)`` images and int labels."""
    cls = tuple(str(c) for c in classes)
    return DataSplit(
        ImageDataset(x_train, y_train.long(), cls, name),
        ImageDataset(x_test, y_test.long(), cls, name),
    )


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """The cache folder: ``$PERTURBD_CACHE`` if set, else ``~/.cache/perturbd/cache``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def cache_file(source: str, *key: object) -> Path:
    """The cache path for ``source`` and a key (any ``repr``-able parts: paths, sizes, mtimes)."""
    digest = hashlib.sha256(repr((CACHE_FORMAT, source, *key)).encode()).hexdigest()[:20]
    return cache_dir() / f"{source}-{digest}.pt"


def file_stamps(root: Path, relpaths: Sequence[str]) -> tuple[tuple[str, int, int] | None, ...]:
    """``(relpath, size in bytes, mtime in ns)`` per path under ``root``; ``None`` if missing."""
    out: list[tuple[str, int, int] | None] = []
    for rel in relpaths:
        try:
            st = (root / rel).stat()
        except OSError:
            out.append(None)
            continue
        out.append((rel, st.st_size, st.st_mtime_ns))
    return tuple(out)


def read_cache(path: Path, name: str) -> DataSplit | None:
    """The split stored at ``path``, or ``None`` if absent or unreadable (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return make_split(
            name,
            blob["train_images"],
            blob["train_labels"],
            blob["test_images"],
            blob["test_labels"],
            blob["classes"],
        )
    except Exception as err:  # a bad cache file is rebuilt, never fatal
        log.warning("ignoring unreadable cache file %s (%s); rebuilding it", path, err)
        return None


def write_cache(path: Path, split: DataSplit) -> None:
    """Store ``split`` at ``path`` atomically; a read-only cache only logs a warning."""
    blob = {
        "train_images": _compact(split.train.images),
        "train_labels": _compact(split.train.labels),
        "test_images": _compact(split.test.images),
        "test_labels": _compact(split.test.labels),
        "classes": list(split.train.classes),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except OSError as err:
        log.warning("cannot write cache file %s (%s); set %s to a writable folder", path, err, CACHE_ENV)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def cached_split(path: Path, name: str, build: Callable[[], DataSplit]) -> DataSplit:
    """The split cached at ``path``; on a miss, ``build()`` it and cache the result."""
    split = read_cache(path, name)
    if split is None:
        split = build()
        write_cache(path, split)
    return split


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` without a larger shared storage (``torch.save`` would write all of it)."""
    t = t.contiguous()
    if t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone()
