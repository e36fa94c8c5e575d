"""What ``perturbd defenses`` and ``perturbd trigger list`` print, without importing torch.

Each entry is a registered name, its kind, one line saying what it is, and its parameters (name,
type, default, accepted range, description) as its pydantic ``Params`` declares them.

- Trigger kinds are read live: their ``Params`` live in the torch-free
  :mod:`perturbd.trigger_params`, with each kind's one-line ``about``.
- Defences declare their ``Params`` beside code that needs torch (3–6 s to import on two cores),
  so their entries are kept in ``catalog.json`` beside this module, written by
  ``python tools/write_catalog.py`` and stamped with a digest of the sources they were read from
  (every ``perturbd/defenses/*.py``). When the sources differ from the stamp (a defence added or
  changed, and the file not rewritten), the registry is imported and read live instead: slower,
  never stale. ``tests/cli/test_listing.py`` fails until the file is rewritten.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from perturbd.fields import bounds_text

#: the stored defence entries, beside this module
CATALOG = Path(__file__).with_name("catalog.json")
#: the folder whose ``*.py`` files define the defences (their ``Params`` and descriptions)
DEFENSES = Path(__file__).resolve().parent.parent / "defenses"

Entry = dict[str, Any]


def first_line(text: str | None) -> str:
    """The first line of a docstring, stripped (``""`` for none)."""
    return (text or "").strip().split("\n")[0].strip()


def _type_name(annotation: Any) -> str:
    """``int``, ``float``, ``path | None``, ``'pca' | 'ica'``: a field's type as a user types it."""
    if get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in get_args(annotation))
    if get_origin(annotation) is Annotated:  # a constrained item type: its bounds are the field's own
        return _type_name(get_args(annotation)[0])
    if get_origin(annotation) is list:
        return f"list[{' | '.join(_type_name(a) for a in get_args(annotation))}]"
    for origin in (tuple, dict):  # tuple[float, float], dict[str, any]
        if get_origin(annotation) is origin:
            return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(annotation))}]"
    if annotation is Any:
        return "any"
    args = get_args(annotation)
    if args:
        return " | ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def field_range(field: FieldInfo) -> str:
    """``"in [1, 1000]"``, ``"> 0"``, ``""`` (no bounds): the bounds a field declares."""
    return bounds_text(field)


def _default(field: FieldInfo) -> Any:
    """The default as JSON (a path as its text); ``None`` for none."""
    value = field.get_default(call_default_factory=True)
    if isinstance(value, Path):
        return str(value)
    return value if isinstance(value, (bool, int, float, str, type(None), list, dict)) else repr(value)


def describe_params(params: type[BaseModel]) -> list[Entry]:
    """One entry per field of ``params``: name, type, default, range, description."""
    return [
        {
            "name": name,
            "type": _type_name(f.annotation),
            "default": _default(f),
            "range": field_range(f),
            "description": " ".join((f.description or "").split()),
        }
        for name, f in params.model_fields.items()
    ]


# --------------------------------------------------------------------------- triggers


def trigger_entries(pattern: str = "*") -> list[Entry]:
    """Every trigger kind matching ``pattern``: name, ``needs a model`` or ``static``, about, params."""
    from perturbd.trigger_params import KINDS

    out = []
    for name in KINDS.names(pattern):
        kind = KINDS.get(name)
        out.append(
            {
                "name": name,
                "kind": "from model" if kind.params.needs_model else "fixed",
                "about": kind.about,
                "params": describe_params(kind.params),
            }
        )
    return out


# --------------------------------------------------------------------------- defences


def sources_digest(folder: Path = DEFENSES) -> str:
    """SHA-256 over the names and bytes of ``folder/*.py``: what the stored entries were read from."""
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def live_defense_entries() -> list[Entry]:
    """Every registered defence, read from the registry (imports torch): name, kind, the first
    line of its class's docstring (else its module's), params."""
    from perturbd.defenses import get_defense, list_defenses

    out = []
    for name in list_defenses():
        cls = get_defense(name)
        module = sys.modules.get(cls.__module__)
        about = first_line(cls.__dict__.get("__doc__")) or first_line(module.__doc__ if module else None)
        out.append({"name": name, "kind": cls.kind, "about": about, "params": describe_params(cls.Params)})
    return out


def stored_defense_entries(path: Path = CATALOG) -> list[Entry] | None:
    """The entries in ``path`` if its stamp matches the defences' sources now; None otherwise
    (missing, unreadable or stale)."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("sources") != sources_digest():
        return None
    entries = stored.get("defenses")
    return entries if isinstance(entries, list) else None


def defense_entries(pattern: str = "*") -> list[Entry]:
    """Every defence matching ``pattern``: stored when current (no torch), else live."""
    entries = stored_defense_entries()
    if entries is None:
        entries = live_defense_entries()
    return [e for e in entries if fnmatch.fnmatchcase(e["name"], pattern)]


def write_catalog(path: Path = CATALOG) -> Path:
    """Write the live defence entries and the sources' stamp to ``path``; returns it."""
    record = {"sources": sources_digest(), "defenses": live_defense_entries()}
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return path


# --------------------------------------------------------------------------- text


def value_text(value: Any) -> str:
    """A default as a user types it after ``KEY=``: strings quoted, lists without spaces."""
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


def listing(entries: list[Entry], prefix: str, width: int = 80) -> list[str]:
    """The lines printed, wrapped to ``width``: per entry ``name  kind  about``, then per parameter
    ``    PREFIX.name=default  type range: description`` (``prefix``: ``trigger``, or ``""`` for
    the entry's own name: what ``-p`` takes), each continued under its text."""
    name_width = max((len(e["name"]) for e in entries), default=0)
    kind_width = max((len(e["kind"]) for e in entries), default=0)
    lines = []
    for e in entries:
        lines += _hanging(f"{e['name']:<{name_width}}  {e['kind']:<{kind_width}}  ", e["about"], width)
        head = prefix or e["name"]
        sets = [f"{head}.{p['name']}={value_text(p['default'])}" for p in e["params"]]
        pad = max((len(s) for s in sets), default=0)
        for s, p in zip(sets, e["params"]):
            kind = " ".join(filter(None, [p["type"], p["range"]]))
            lines += _hanging(f"    {s:<{pad}}  ", f"{kind}: {p['description']}".rstrip(": "), width)
    return lines


def _hanging(lead: str, text: str, width: int) -> list[str]:
    """``lead`` then ``text`` wrapped to ``width``, its later lines under its first (at least 24
    columns of text however long ``lead`` is; a word is never broken)."""
    room = max(width - len(lead), 24)
    wrapped = textwrap.wrap(text, room, break_long_words=False, break_on_hyphens=False) or [""]
    return [(lead + wrapped[0]).rstrip()] + [" " * len(lead) + rest for rest in wrapped[1:]]
