"""Config files and dotted keys: YAML in and out (safe loader only), ``section.key=value``
assignments, and nested mappings by dotted key. Used by ``--set``, ``--param`` and sweep axes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
)

from perturbd.errors import ConfigError
from perturbd.limits import MAX_YAML_BYTES, MAX_YAML_VALUES


class DuplicateKeyError(yaml.constructor.ConstructorError):  # type: ignore[misc]  # PyYAML is untyped
    """A mapping that names one key twice."""


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]
    """The safe loader, refusing a mapping that names a key twice (YAML's own rule; PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: the safe loader's own error follows
            if duplicate:
                raise DuplicateKeyError(None, None, f"the key '{key}' twice", key_node.start_mark)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


class YamlSizeError(yaml.YAMLError):  # type: ignore[misc]  # PyYAML is untyped
    """A document too large once its aliases are expanded, or holding an alias to itself."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def expanded_values(root: yaml.Node, limit: int = MAX_YAML_VALUES) -> int:
    """How many values (scalars, lists, mappings) the document ``root`` holds with every alias
    expanded, counted on its node graph (each node once, so a billion laughs costs its size in
    the file), capped at ``limit + 1``; a :class:`YamlSizeError` for an alias to itself."""
    done: dict[int, int] = {}
    path = {id(root)}
    stack: list[tuple[yaml.Node, Any, int]] = [(root, iter(_children(root)), 1)]
    while stack:
        node, rest, total = stack[-1]
        child = next(rest, None)
        if child is None:
            stack.pop()
            path.discard(id(node))
            done[id(node)] = total
            if stack:
                above, above_rest, above_total = stack[-1]
                stack[-1] = (above, above_rest, min(above_total + total, limit + 1))
        elif id(child) in done:
            stack[-1] = (node, rest, min(total + done[id(child)], limit + 1))
        elif id(child) in path:
            raise YamlSizeError(f"an alias to itself (line {child.start_mark.line + 1}); write its values out")
        else:
            path.add(id(child))
            stack.append((child, iter(_children(child)), 1))
    return done[id(root)]


def load_yaml(text: str) -> Any:
    """YAML text as Python data with the safe loader (nothing is executed); a key named twice in
    one mapping is a :class:`DuplicateKeyError`; more than :data:`~perturbd.limits.MAX_YAML_VALUES`
    values with the aliases expanded, or an alias to itself, a :class:`YamlSizeError` (before the
    data is built)."""
    loader = _StrictLoader(text)  # a SafeLoader subclass: nothing is executed
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        values = expanded_values(node)
        if values > MAX_YAML_VALUES:
            raise YamlSizeError(f"more than {MAX_YAML_VALUES:,} values once its aliases are expanded; perturbd reads no config that large")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping (safe loader: nothing is executed; a key named twice
    in one mapping is an error, not "the last one wins")."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{path} is too large for a config ({size:,} bytes; perturbd reads at most {MAX_YAML_BYTES:,})")
    try:
        data = load_yaml(path.read_text())
    except YamlSizeError as err:
        raise ConfigError(f"{path} holds {err}") from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to be a config") from None
    except DuplicateKeyError as err:
        mark = err.problem_mark
        at = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path} names {err.problem} in one mapping{at}; keep one of them") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{at}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping of sections, got a {type(data).__name__}")
    return data


def parse_assignment(item: str, usage: str) -> tuple[str, Any]:
    """``key=value`` as ``(key, value)``, the value parsed as YAML (``""`` when empty, the text
    itself when it is not YAML); a one-line :class:`ConfigError` saying ``usage`` (e.g. ``--set
    takes section.key=value``) for anything else."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{usage}, got '{item}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_dotted(data: dict[str, Any], key: str, value: Any, *, merge: bool = False) -> None:
    """Set ``data[a][b][c] = value`` for ``key = "a.b.c"``, making missing sections; with
    ``merge`` a mapping value is merged into a mapping already there (so a sweep axis
    ``trigger: {kind: adaptive}`` keeps the other trigger keys), else it replaces it. A value in
    the way of a section is a one-line :class:`ConfigError`."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: '{part}' is a value ({child!r}), not a section")
        node = child
    old = node.get(parts[-1])
    node[parts[-1]] = {**old, **value} if merge and isinstance(old, dict) and isinstance(value, dict) else value


def flat_keys(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``: every leaf of nested mappings under its dotted key."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested dict copy."""
    out: dict[str, Any] = json.loads(json.dumps(data, default=str))
    for item in overrides:
        set_dotted(out, *parse_assignment(item, "--set takes section.key=value"))
    return out


def dump_yaml(cfg: BaseModel) -> str:
    text: str = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    return text
