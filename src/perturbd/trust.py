"""What may make perturbd run code: the user, never a file it reads.

perturbd trusts the config and the command line the user passes (``perturbd run CONFIG.yaml``,
``--set``, a sweep file, ``--arch``, a model file named on the command line): they may name code to
run. It does not trust the files it reads: data, weights, masks, checkpoints' metadata, and run
folders (``config.yaml`` of a finished run, which ``defend``, ``audit``, ``export`` and
``reproduce`` read to rebuild its model and data), which may come from someone else.

A config names code in an architecture (:data:`CODE_KEYS`) of the prefix ``factory:`` (perturbd
imports a Python module and calls it) or ``torchscript:`` (``torch.jit.load`` runs what the file
holds): :data:`USER_CODE`. Every other field of a config is data: weights are read as safetensors
or with ``torch.load(weights_only=True)``, data files without pickles, defences and triggers by
their registered names.

A file that names code is refused in one line (:func:`check_code`), before anything is imported or
loaded, unless the user trusts it explicitly: ``--trust-code`` on the command line,
``trust_code=True`` from Python. No config key says so: a run folder's ``config.yaml`` could then
trust itself (``trust_code`` in one is an unknown key, refused like any other).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from perturbd.config import ExperimentConfig, parse_assignment
from perturbd.errors import ConfigError

#: architecture prefixes that run code: ``factory:module:function`` and ``torchscript:PATH``
USER_CODE = ("factory", "torchscript")
#: the config keys whose value can name code: the victim's architecture, the adversary's surrogate
CODE_KEYS = ("model.name", "attack.surrogate")
_WHAT = {"factory": "Python code perturbd would import and call", "torchscript": "a TorchScript program perturbd would load and run"}


def names_code(name: str) -> bool:
    """Whether the architecture ``name`` is code to run (:data:`USER_CODE`), not a registered model."""
    return str(name).strip().partition(":")[0] in USER_CODE


def code_named(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """The ``(key, value)`` pairs of ``cfg`` among :data:`CODE_KEYS` that name code."""
    values = {"model.name": cfg.model.name, "attack.surrogate": cfg.attack.surrogate}
    return [(key, values[key]) for key in CODE_KEYS if names_code(values[key])]


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The dotted keys that ``section.key=value`` overrides set."""
    return [parse_assignment(item, "--set takes section.key=value")[0] for item in overrides]


def check_code(cfg: ExperimentConfig, source: Path, *, mine: Iterable[str] = (), arch_option: bool = False) -> None:
    """A one-line :class:`ConfigError` if ``cfg``, read from the file ``source``, names code to run
    in a key the user did not set (``mine``: keys, or sections, the user's overrides or options
    gave). ``arch_option``: the command takes ``--arch`` (the fix then names it too)."""
    given = list(mine)
    for key, value in code_named(cfg):
        if any(key == k or key.startswith(f"{k}.") for k in given):
            continue
        fix = "--trust-code if you trust who wrote it" + (
            ", or --arch to name the architecture yourself" if arch_option and key == "model.name" else ""
        )
        what = _WHAT[str(value).strip().partition(":")[0]]
        raise ConfigError(f"{source}: {key} '{value}' names code to run ({what}); perturbd runs no code a file names unless told: {fix}")
