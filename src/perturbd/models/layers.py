"""Reading a model at a named layer: the output of any layer, with a forward hook, for
``model.features``; and the names a user can pick from (top few levels), for the error that lists
them.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from perturbd.errors import ConfigError

SHOWN = 40  # layer names listed in an error at most


class _Read(BaseException):
    """Carries a layer's tensor out of the forward pass that :func:`read_layer` cuts short (a
    BaseException, so that a model's own ``except Exception`` does not swallow it)."""

    def __init__(self, value: Tensor) -> None:
        self.value = value


def read_layer(net: nn.Module, name: str, run: Callable[[], object], *, inputs: bool = False) -> Tensor:
    """The output (``inputs``: the first input) of ``net``'s layer ``name`` during ``run()``,
    flattened to ``(N, D)``. The pass stops there: later layers neither run nor change it."""

    def grab(_m: nn.Module, args: tuple[Tensor, ...], out: Tensor | None = None) -> None:
        raise _Read(args[0] if inputs else out)  # type: ignore[arg-type]

    layer = submodule(net, name)
    handle = layer.register_forward_pre_hook(grab) if inputs else layer.register_forward_hook(grab)
    try:
        run()
    except _Read as found:
        if not isinstance(found.value, Tensor):
            raise ConfigError(
                f"layer '{name}' gives a {type(found.value).__name__}, not a tensor; name another with model.features"
            ) from None
        return found.value.flatten(1)
    finally:
        handle.remove()
    raise ConfigError(f"layer '{name}' is not used when the model classifies an image; name another with model.features")


def layer_names(net: nn.Module, depth: int = 2) -> list[str]:
    """Names of ``net``'s layers up to ``depth`` dots deep (``layer4``, ``layer4.1``), in order."""
    return [name for name, _ in net.named_modules() if name and name.count(".") < depth]


def submodule(net: nn.Module, name: str) -> nn.Module:
    """``net``'s layer ``name`` (TorchScript modules too, which lack ``get_submodule``); KeyError if none."""
    modules: dict[str, nn.Module] = dict(net.named_modules())
    return modules[name]


def check_layer(net: nn.Module, name: str, arch: str) -> str:
    """``name`` if ``net`` has a layer of that name; else a ConfigError listing those it has."""
    if not name or name not in dict(net.named_modules()):
        names = layer_names(net)
        more = f", … ({len(names) - SHOWN} more)" if len(names) > SHOWN else ""
        raise ConfigError(f"model '{arch}' has no layer '{name}'; its layers: {', '.join(names[:SHOWN])}{more}")
    return name
