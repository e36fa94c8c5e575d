"""Features of a TorchScript model: the value of one layer, read from its compiled graph.

A loaded TorchScript module takes no forward hooks, so :func:`features_fn` reads a layer the way
the graph computes it: the module's ``forward`` graph is copied with every call inlined (each node
keeps the module path it came from: ``SELF(ResNet).layer4(Sequential).1(BasicBlock)``), its output
is replaced by the wanted value, and the result is compiled into a function of
``(module, images)``. The wanted value is

- for a named layer, the last tensor computed inside that layer that the rest of the graph uses
  (the layer's output, the first time it runs);
- by default, the input of the last ``aten::linear`` node (the final layer's input, as
  :meth:`~perturbd.models.Classifier.features` of perturbd's own models).

The function reads the module's parameters and ``training`` flag when it runs, so it follows the
module through training, ``.to(device)`` and ``.eval()``. It is built once per module and layer.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor

from perturbd.errors import ConfigError

_PART = re.compile(r"(\w+)\([^()]*\)")
_FUNCTIONS: weakref.WeakKeyDictionary[torch.jit.ScriptModule, dict[str | None, Callable[..., Tensor]]] = weakref.WeakKeyDictionary()


def features_fn(net: torch.jit.ScriptModule, layer: str | None, arch: str) -> Callable[[Tensor], Tensor]:
    """``f(x)``: the value of ``layer`` (None: the final layer's input) for input ``x``, flattened."""
    known = _FUNCTIONS.setdefault(net, {})
    if layer not in known:
        known[layer] = _compile(net, layer, arch)
    fn = known[layer]
    return lambda x: fn(net._c, x).flatten(1)


def _path(node: torch._C.Node) -> list[str]:
    """The module path a node of an inlined graph came from (``['layer4', '1', 'relu']``)."""
    return _PART.findall(node.getModuleHierarchy() or "")[1:]


def _compile(net: torch.jit.ScriptModule, layer: str | None, arch: str) -> Callable[..., Tensor]:
    # a ScriptModule's forward is a ScriptMethod (it has a graph); nn.Module's stub says a plain Callable
    forward = cast("torch._C.ScriptMethod[..., Tensor]", net.forward)
    graph = forward.graph.copy()
    torch._C._jit_pass_inline(graph)
    nodes = list(graph.nodes())
    if layer is None:
        linears = [n for n in nodes if n.kind() == "aten::linear"]
        if not linears:
            raise ConfigError(
                f"model '{arch}' has no linear final layer; name the layer to read features from with model.features (--features)"
            )
        value = linears[-1].inputsAt(0)
    else:
        want = layer.split(".")

        def inside(node: torch._C.Node) -> bool:
            return _path(node)[: len(want)] == want

        outputs = [
            out
            for node in nodes
            if inside(node)
            for out in node.outputs()
            if out.type().kind() == "TensorType" and any(not inside(use.user) for use in out.uses())
        ]
        if not outputs:
            raise ConfigError(
                f"layer '{layer}' of model '{arch}' is not used when it classifies an image; name another with model.features"
            )
        value = outputs[-1]
    while list(graph.outputs()):
        graph.eraseOutput(0)
    graph.registerOutput(value)
    torch._C._jit_pass_dce(graph)
    return torch._C._create_function_from_graph(f"features_{layer or 'final'}".replace(".", "_"), graph)
