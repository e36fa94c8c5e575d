"""glibc's malloc set for tensors (:mod:`perturbd.malloc`): the same numbers, one line for a bad setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from perturbd import malloc
from perturbd.errors import ConfigError

# trains cnn28 one epoch on 512 mnist5k images and runs fastnet32_small on a 1,024-image batch
# (blocks far above glibc's 32 MiB mmap ceiling); prints the mode and a digest of both results
CHILD = """
import hashlib, torch
from perturbd.config import DataConfig, TrainConfig
from perturbd.data import load_data
from perturbd.malloc import malloc_state
from perturbd.models import get_model
from perturbd.process import tune_process
from perturbd.train import fit
tune_process(1)  # the entry point sets the process; fit leaves it alone
split = load_data(DataConfig(name="mnist5k", train_limit=512))
model = get_model("cnn28", split.train.image_shape, 10, seed=0)
fit(model, split.train, TrainConfig(epochs=1, device="cpu", threads=1), seed=0)
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.state_dict().values()))
net = get_model("fastnet32_small", (3, 32, 32), 10, seed=0).eval()
with torch.no_grad():
    out = net(torch.rand(1024, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
digest.update(out.numpy().tobytes())
print(malloc_state(), digest.hexdigest())
"""


def child(mode: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | {"PERTURBD_MALLOC": mode}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


@pytest.mark.skipif(not malloc._glibc(), reason="glibc only")
def test_tuned_malloc_changes_no_number() -> None:
    tuned, system = child("tuned"), child("system")
    assert tuned[0] == "tuned" and system[0] == "system"
    assert tuned[1] == system[1], "same seed, same weights and outputs, however memory is served"


def test_a_bad_setting_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERTURBD_MALLOC", "sytem")
    with pytest.raises(ConfigError, match=r"^PERTURBD_MALLOC='sytem' is not one of tuned, system; unset it for the default \(tuned\)$"):
        malloc.malloc_mode()


def test_the_user_s_own_settings_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*malloc._OWN_VARIABLES, "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PERTURBD_MALLOC", "System ")
    assert malloc._tune() == "system"
    monkeypatch.delenv("PERTURBD_MALLOC")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert malloc._tune() == "own"
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0")
    assert malloc._tune() == "own"
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert malloc._tune() == ("tuned" if malloc._glibc() else "unavailable")
    assert malloc.tune_malloc() == malloc.tune_malloc(), "once per process"
