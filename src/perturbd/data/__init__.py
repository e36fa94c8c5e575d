"""Image data: uint8 ``(N, C, H, W)`` tensors and the registry of data sources.

``load_data(cfg, seed)`` is the one entry point; ``list_sources()`` and ``source_status()`` back
the ``perturbd datasets`` command. A new source is one function decorated with
``@register_source(name, status=...)`` in a module imported below.

Example::

    from perturbd.config import DataConfig
    from perturbd.data import load_data

    split = load_data(DataConfig(name="mnist5k", train_limit=1000), seed=0)
    split.train.images.shape   # torch.Size([1000, 1, 28, 28]), uint8 pixels 0–255
"""

from perturbd.data.dataset import DataSplit, ImageDataset, to_float01
from perturbd.data.sources import (
    SOURCES,
    Source,
    SourceRequest,
    cache_dir,
    get_source,
    list_sources,
    load_data,
    register_source,
    source_status,
    stratified_indices,
)

# sources register themselves on import
from perturbd.data import arrays, builtin, imagefolder, npz, torchvision_sources  # noqa: F401  isort: skip

__all__ = [
    "SOURCES",
    "DataSplit",
    "ImageDataset",
    "Source",
    "SourceRequest",
    "cache_dir",
    "get_source",
    "list_sources",
    "load_data",
    "register_source",
    "source_status",
    "stratified_indices",
    "to_float01",
]
