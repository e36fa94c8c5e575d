"""The defender's clean images: the training images the attacker did not touch, neither the
poisoned ones nor wanet's noise-mode images (warped, kept at their labels)."""

from __future__ import annotations

import json

import torch

from perturbd.config import load_config
from perturbd.evaluation import defender_clean_set
from perturbd.runs.experiment import run
from perturbd.runs.saved import load_inputs
from perturbd.seeding import derived_generator

# a wanet run on the synthetic bars: 400 victim images, 20 poisoned and 40 noise-mode ones (noise_ratio 2)
WANET = [
    "data.name=synthetic", "data.train_limit=500", "data.test_limit=100", "train.epochs=1", "train.batch_size=50",
    "train.device=cpu", "train.threads=1", "trigger.kind=wanet", "poison.rate=0.05",
    "defenses=[{name: fine_tuning, params: {n_clean: 100000, epochs: 1}}]",
]  # fmt: skip


def test_touched_images_are_left_out(planted) -> None:
    poisoned = set(planted.indices.tolist())
    touched = torch.tensor([i for i in range(0, 300, 7) if i not in poisoned])
    clean = defender_clean_set(planted.train, planted.indices, 0, touched)
    keep = torch.ones(len(planted.train), dtype=torch.bool)
    keep[planted.indices] = False
    keep[touched] = False
    idx = torch.nonzero(keep).flatten()
    assert len(clean) == len(planted.train) - len(poisoned) - len(touched)
    order = torch.randperm(len(idx), generator=derived_generator(0, "defender"))
    assert torch.equal(clean.images, planted.train.images[idx[order]]), "the untouched images, in the seeded order"


def test_wanet_noise_images_are_not_the_defenders(tmp_path) -> None:
    folder = run(load_config(overrides=WANET), tmp_path).run_dir
    record = json.loads((folder / "poison_indices.json").read_text())
    poisoned, noise = record["indices"], record["noise_indices"]
    assert len(poisoned) == 20 and len(noise) == 40 and not set(poisoned) & set(noise)
    victims = 500 - 100  # the training split less the adversary's auxiliary part
    used = json.loads((folder / "defenses.json").read_text())["defenses"][0]["clean_images_used"]
    assert used == victims - 20 - 40, "the whole pool: every image but the poisoned and the noise-mode ones"
    inputs = load_inputs(folder)
    assert len(inputs.clean) == victims - 20 - 40, "perturbd defend on the run folder leaves them out too"
    assert inputs.train is not None
    warped = inputs.train.images[torch.tensor(noise)].flatten(1)
    pool = inputs.clean.images.flatten(1)
    assert not bool((pool[:, None] == warped[None]).all(-1).any()), "no noise-mode image is in the pool"
