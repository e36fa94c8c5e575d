"""Safetensors files with reproducible bytes."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from perturbd.tensorfile import save_tensors


def test_same_tensors_and_metadata_give_the_same_bytes_and_read_back(tmp_path: Path) -> None:
    tensors = {"w": torch.arange(6.0).view(2, 3), "b": torch.ones(5, dtype=torch.int64)}
    meta = {f"key{i}": str(i) for i in range(12)}
    blobs = set()
    for n in range(6):  # safetensors orders metadata by a per-map random hash: vary it
        shuffled = dict(sorted(meta.items(), key=lambda kv: hash((kv[0], n))))
        blobs.add(save_tensors(tmp_path / f"{n}.safetensors", tensors, shuffled).read_bytes())
    assert len(blobs) == 1
    with safe_open(str(tmp_path / "0.safetensors"), framework="pt") as fh:
        assert fh.metadata() == meta
        assert all(torch.equal(fh.get_tensor(k), v) for k, v in tensors.items())
    blob = blobs.pop()
    assert (8 + int.from_bytes(blob[:8], "little")) % 8 == 0, "header padded to 8 bytes"
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
