"""Check the import graph of the perturbd package: no import cycles, no imports inside functions.

Run: ``python tools/check_imports.py``. Exit 0 when clean; exit 1 with one line per problem:

- ``import cycle: A -> B -> A``: every elementary cycle of the graph between perturbd modules.
  ``A -> B`` for every import of perturbd module B in A, at the top or inside a function;
  ``from pkg import name`` where ``pkg.name`` is a module is an edge to ``pkg.name``; relative
  imports are resolved. Importing B also runs the ``__init__`` of each package above B, so A gets
  an edge to each of those too, except the root package and the packages that hold A itself
  (they are already initialised when A runs). Imports under ``if TYPE_CHECKING:`` are edges too: a
  cycle of type-only imports runs, but it is a cycle of the design all the same.
- ``import inside a function: FILE:LINE in FUNC: STATEMENT``: every ``import`` and
  ``from … import`` in a function or method body. Allowed: imports of the optional dependencies
  in :data:`OPTIONAL` (absent from a plain install), of the heavy dependencies in :data:`DEFERRED`
  (loaded only by the work that needs them, so that a run that does not never pays for them),
  and every deferred import of the entry points in :data:`ENTRY_POINTS`: the command line defers
  the library so that ``perturbd --help`` and a config mistake answer before torch loads, and
  ``import perturbd`` stays cheap.

Pure ``ast``: the package is read, never imported.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "perturbd"
# modules of optional dependencies (and their submodules), imported where they are used;
# torch.utils.tensorboard is part of torch but needs the optional tensorboard package
OPTIONAL = frozenset({"ray", "tensorboard", "torch.utils.tensorboard"})
# heavy dependencies imported where they are used: with torch loaded, scikit-learn costs a process
# 1.2 s of CPU (time.process_time around the import, 2-core AMD EPYC), paid by every run and sweep
# worker that runs no defence; scipy (MM-BD's gamma fit) is as heavy: scikit-learn loads it
DEFERRED = frozenset({"scipy", "sklearn", "threadpoolctl"})
# files and folders (relative to the package folder) that may defer imports into their functions
ENTRY_POINTS = frozenset({"cli/", "__init__.py"})
# stop listing cycles after this many (one tangle can hold very many)
MAX_CYCLES = 200


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the package in folder ``root``: dotted name → file."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, str | None]]:
    """Every import statement (those under ``if TYPE_CHECKING:`` included), with the name of the
    function it is in (``Class.method``), or None at module or class level."""

    def walk(node: ast.AST, scope: list[str], func: str | None) -> Iterator[tuple[ast.Import | ast.ImportFrom, str | None]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, func
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in [*child.body, *child.orelse]:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), scope, func)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = ".".join([*scope, child.name])
                yield from walk(child, [*scope, child.name], name)
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, [*scope, child.name], func)
            else:
                yield from walk(child, scope, func)

    yield from walk(tree, [], None)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``node`` (in ``module``) imports by name."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            source = ".".join([*base, node.module] if node.module else base)
        else:
            source = node.module or ""
        names = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
    out = set()
    for name in names:
        parts = name.split(".")
        while parts and ".".join(parts) not in known:  # `import pkg.mod.Class`-like names: the module holding it
            parts.pop()
        if parts:
            out.add(".".join(parts))
    return out


def _with_packages(target: str, importer: str, root_name: str) -> set[str]:
    """``target`` and the packages above it whose ``__init__`` the import runs."""
    out = {target}
    parts = target.split(".")
    for i in range(2, len(parts)):  # parts[:1] is the root package
        pkg = ".".join(parts[:i])
        if not (importer == pkg or importer.startswith(pkg + ".")):
            out.add(pkg)
    out.discard(importer)
    return out


def _where(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def scan(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """The import graph of the package in folder ``root`` and its problems so far (imports
    inside functions, files that do not parse)."""
    known = module_names(root)
    graph: dict[str, set[str]] = {m: set() for m in known}
    problems: list[str] = []
    for module, path in known.items():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        except SyntaxError as err:
            problems.append(f"cannot parse: {_where(path)}:{err.lineno}: {err.msg}")
            continue
        rel = path.relative_to(root).as_posix()
        entry = rel in ENTRY_POINTS or any(rel.startswith(p) for p in ENTRY_POINTS if p.endswith("/"))
        for node, func in _imports(tree):
            for target in _targets(node, module, path.name == "__init__.py", known):
                graph[module] |= _with_packages(target, module, root.name)
            if func is not None and not entry and not _optional(node):
                problems.append(f"import inside a function: {_where(path)}:{node.lineno} in {func}: {ast.unparse(node)}")
    return graph, problems


def _is_optional(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in OPTIONAL | DEFERRED)


def _optional(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.Import):
        return all(_is_optional(a.name) for a in node.names)
    return node.level == 0 and _is_optional(node.module or "")


def cycles(graph: dict[str, set[str]], limit: int = MAX_CYCLES) -> list[list[str]]:
    """The elementary cycles of ``graph`` (Johnson's algorithm), each starting at its smallest
    module, at most ``limit`` of them."""
    order = sorted(graph)
    found: list[list[str]] = []
    for i, start in enumerate(order):
        allowed = set(order[i:])
        comp = next((c for c in _components(graph, allowed) if start in c), set())
        if len(comp) < 2 and start not in graph[start]:
            continue
        blocked: set[str] = set()
        blockers: dict[str, set[str]] = {m: set() for m in comp}
        path: list[str] = []

        def unblock(node: str) -> None:
            blocked.discard(node)
            for other in blockers[node].copy():
                blockers[node].discard(other)
                if other in blocked:
                    unblock(other)

        def circuit(node: str) -> bool:
            closed = False
            path.append(node)
            blocked.add(node)
            for nxt in sorted(graph[node] & comp):
                if len(found) >= limit:
                    break
                if nxt == start:
                    found.append([*path, start])
                    closed = True
                elif nxt not in blocked and circuit(nxt):
                    closed = True
            if closed:
                unblock(node)
            else:
                for nxt in graph[node] & comp:
                    blockers[nxt].add(node)
            path.pop()
            return closed

        circuit(start)
        if len(found) >= limit:
            break
    return found


def _components(graph: dict[str, set[str]], allowed: set[str]) -> list[set[str]]:
    """Strongly connected components of ``graph`` restricted to ``allowed`` (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node] & allowed:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            comp = set()
            while True:
                top = stack.pop()
                comp.add(top)
                if top == node:
                    break
            out.append(comp)

    for node in sorted(allowed):
        if node not in index:
            visit(node)
    return out


def check(root: Path) -> list[str]:
    """Every problem of the package in folder ``root``, one line each (empty when clean)."""
    graph, problems = scan(root)
    loops = cycles(graph)
    lines = [f"import cycle: {' -> '.join(c)}" for c in loops]
    if len(loops) >= MAX_CYCLES:
        lines.append(f"import cycle: … stopped listing after {MAX_CYCLES} cycles")
    return lines + problems


def main() -> int:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    problems = check(PACKAGE)
    for line in problems:
        print(line)
    if problems:
        return 1
    graph, _ = scan(PACKAGE)
    print(f"imports ok: {len(graph)} modules, {sum(map(len, graph.values()))} edges, no cycles, no imports inside functions")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
