"""tools/check_imports.py on small package trees: cycles, imports inside functions, what is allowed."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "check_imports.py"


@pytest.fixture(scope="module")
def checker():
    spec = importlib.util.spec_from_file_location("check_imports", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_package(tmp_path: Path, files: dict[str, str]) -> Path:
    """A package ``perturbd`` in ``tmp_path`` with ``files`` (relative path → source)."""
    root = tmp_path / "perturbd"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_a_clean_tree_has_no_problems(checker, tmp_path):
    root = make_package(tmp_path, {"a.py": "import json\nfrom perturbd import b\n", "b.py": "from .c import x\n", "c.py": "x = 1\n"})
    assert checker.check(root) == []
    graph, _ = checker.scan(root)
    assert graph["perturbd.a"] == {"perturbd.b"} and graph["perturbd.b"] == {"perturbd.c"}


def test_a_cycle_is_found_with_its_modules(checker, tmp_path):
    root = make_package(tmp_path, {"a.py": "import perturbd.b\n", "b.py": "from perturbd.c import y\n", "c.py": "from . import a\ny = 1\n"})
    assert checker.check(root) == ["import cycle: perturbd.a -> perturbd.b -> perturbd.c -> perturbd.a"]


def test_an_import_inside_a_function_is_a_cycle_edge_and_a_problem(checker, tmp_path):
    root = make_package(tmp_path, {
        "a.py": "from perturbd.b import f\n",
        "b.py": "class K:\n    def f(self):\n        from perturbd.a import g\n        return g\n",
    })  # fmt: skip
    problems = checker.check(root)
    assert "import cycle: perturbd.a -> perturbd.b -> perturbd.a" in problems
    assert any(p.startswith("import inside a function:") and "b.py:3 in K.f: from perturbd.a import g" in p for p in problems), problems
    assert len(problems) == 2


def test_importing_a_module_runs_the_packages_above_it(checker, tmp_path):
    root = make_package(tmp_path, {
        "sub/__init__.py": "from perturbd.top import VALUE\n",
        "sub/leaf.py": "from perturbd.sub.other import z\n",  # sub holds leaf: no edge to sub
        "sub/other.py": "z = 0\n",
        "top.py": "from perturbd.sub.leaf import z\nVALUE = z\n",
    })  # fmt: skip
    graph, _ = checker.scan(root)
    assert graph["perturbd.top"] == {"perturbd.sub", "perturbd.sub.leaf"}
    assert graph["perturbd.sub.leaf"] == {"perturbd.sub.other"}
    assert checker.check(root) == ["import cycle: perturbd.sub -> perturbd.top -> perturbd.sub"]


def test_type_checking_ray_and_entry_points_are_allowed(checker, tmp_path):
    root = make_package(tmp_path, {
        "__init__.py": "def run():\n    from perturbd.a import go\n    return go()\n",
        "cli/__init__.py": "from perturbd.cli import run\n",
        "cli/run.py": "def main():\n    import json\n    from perturbd.a import go\n",
        "a.py": """\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from perturbd.b import B
            else:
                import json
            def go():
                import ray
                from ray.util import queue
                return ray
            """,
        "b.py": "import typing\nif typing.TYPE_CHECKING:\n    from perturbd.a import go\nfrom perturbd.a import go as run\n",
    })  # fmt: skip
    graph, _ = checker.scan(root)
    assert graph["perturbd.a"] == {"perturbd.b"} and graph["perturbd.b"] == {"perturbd.a"}
    assert checker.check(root) == ["import cycle: perturbd.a -> perturbd.b -> perturbd.a"]


def test_a_type_only_import_is_an_edge_of_the_graph(checker, tmp_path):
    """A cycle through ``if TYPE_CHECKING:`` imports is a cycle of the design, though it runs."""
    root = make_package(tmp_path, {
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from perturbd.b import B\n",
        "b.py": "from perturbd.c import C\nB = C\n",
        "c.py": "C = 1\n",
    })  # fmt: skip
    assert checker.check(root) == []
    graph, _ = checker.scan(root)
    assert graph["perturbd.a"] == {"perturbd.b"}


def test_an_optional_submodule_is_allowed_but_not_its_parent(checker, tmp_path):
    """torch.utils.tensorboard needs the optional tensorboard package; torch itself is no optional import."""
    root = make_package(
        tmp_path,
        {
            "a.py": "def f():\n    from torch.utils.tensorboard import SummaryWriter\n    import tensorboard\n",
            "b.py": "def g():\n    import torch\n",
        },
    )
    assert [line.split(" in ")[-1] for line in checker.check(root)] == ["g: import torch"]


def test_a_heavy_dependency_may_wait_for_the_function_that_needs_it(checker, tmp_path):
    root = make_package(
        tmp_path,
        {
            "a.py": "def f():\n    import sklearn.cluster\n    from sklearn.metrics import roc_curve\n",
            "b.py": "def g():\n    import numpy\n",
        },
    )
    assert [line.split(" in ")[-1] for line in checker.check(root)] == ["g: import numpy"]


def test_every_cycle_is_listed(checker, tmp_path):
    root = make_package(
        tmp_path, {"a.py": "import perturbd.b\nimport perturbd.c\n", "b.py": "import perturbd.a\n", "c.py": "import perturbd.a\n"}
    )
    assert checker.check(root) == [
        "import cycle: perturbd.a -> perturbd.b -> perturbd.a",
        "import cycle: perturbd.a -> perturbd.c -> perturbd.a",
    ]


def test_main_exits_1_and_lists_the_problems(checker, tmp_path, monkeypatch, capsys):
    root = make_package(tmp_path, {"a.py": "def f():\n    import os\n"})
    monkeypatch.setattr(checker, "PACKAGE", root)
    assert checker.main() == 1
    assert "in f: import os" in capsys.readouterr().out
    (root / "a.py").write_text("import os\n")
    assert checker.main() == 0
    assert capsys.readouterr().out.startswith("imports ok: 2 modules")


def test_perturbd_itself_has_one_way_imports(checker):
    """The import graph of src/perturbd has no cycle, and no import hides inside a function
    except in the entry points and for optional dependencies (issue: attack side, one way)."""
    root = Path(__file__).resolve().parents[1] / "src" / "perturbd"
    assert checker.check(root) == []
