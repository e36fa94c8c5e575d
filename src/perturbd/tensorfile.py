"""Safetensors files with reproducible bytes, written atomically.

``safetensors`` keeps a file's string metadata in a hash map, so the same tensors and metadata
are written with the keys in another order by every process: two runs of one seed gave
checkpoints of different SHA-256. :func:`save_tensors` rewrites the JSON header with sorted keys
(the data section and its offsets are untouched; the header is padded with spaces to a multiple
of 8 bytes, as the format asks), so the same tensors and metadata always give the same bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save

HEADER_ALIGN = 8


def canonical(blob: bytes) -> bytes:
    """``blob`` (a whole safetensors file) with its header's keys sorted, compact and padded."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % HEADER_ALIGN)
    return len(text).to_bytes(8, "little") + text + blob[8 + size :]


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (CPU, contiguous) and ``metadata`` to ``path``: written beside it, then
    renamed into place, so the file is either whole or absent. Returns ``path``."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(canonical(save(tensors, metadata=metadata)))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
