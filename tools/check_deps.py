"""Check that the dependencies declared in pyproject.toml are exactly the ones the package imports.

Run: ``python tools/check_deps.py``. Exit 1 (with the names) when a third-party module is imported
but not declared, or declared but never imported. Optional extras count as declared; imports
guarded for optional features (e.g. ``ray``) must belong to an extra.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
# distribution name → top-level module name, where they differ
MODULE_OF = {"pyyaml": "yaml", "pillow": "PIL", "scikit-learn": "sklearn", "adversarial-robustness-toolbox": "art"}
# dependencies used only through another package (not imported by name)
INDIRECT: set[str] = set()
# modules imported directly but guaranteed by a declared dependency's own requirements
PROVIDED_BY = {"annotated_types": "pydantic", "pydantic_core": "pydantic", "threadpoolctl": "scikit-learn"}


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda specs: {re.split(r"[\s<>=!~\[;]", s, maxsplit=1)[0].lower() for s in specs}  # noqa: E731
    extras = set().union(*(names(v) for v in project.get("optional-dependencies", {}).values()))
    return names(project["dependencies"]), extras


def imported() -> set[str]:
    stdlib = set(sys.stdlib_module_names)
    found: set[str] = set()
    for path in (ROOT / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            found |= {m.split(".")[0] for m in mods}
    return {m for m in found if m not in stdlib and m != "perturbd"}


def main() -> int:
    deps, extras = declared()
    to_module = lambda d: MODULE_OF.get(d, d.replace("-", "_"))  # noqa: E731
    declared_modules = {to_module(d) for d in deps | extras}
    used = imported()
    provided = {m for m, dist in PROVIDED_BY.items() if dist in deps}
    missing = sorted(used - declared_modules - provided)
    unused = sorted(d for d in deps if to_module(d) not in used and d not in INDIRECT)
    for name in missing:
        print(f"imported but not declared in pyproject.toml: {name}")
    for name in unused:
        print(f"declared in pyproject.toml but never imported: {name}")
    if not missing and not unused:
        print(f"dependencies ok: {len(deps)} declared, {len(extras)} optional, all imported")
    return 1 if missing or unused else 0


if __name__ == "__main__":
    raise SystemExit(main())
