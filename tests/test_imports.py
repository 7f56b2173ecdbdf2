"""The imports between einlocal's own modules form no cycle (read from the source with ast)."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# package name -> the folder that holds it (einlocal.backends lives in backends/)
PACKAGES = {"einlocal": ROOT / "einlocal", "einlocal.backends": ROOT / "backends"}


def module_files(packages: dict = PACKAGES) -> dict[str, pathlib.Path]:
    """Module name -> its source file, for every module of the packages."""
    mods = {}
    for pkg, folder in packages.items():
        for f in sorted(folder.rglob("*.py")):
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join([pkg, *parts])] = f
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, at module level or inside functions,
    except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


def import_graph(mods: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """module -> the einlocal modules it imports.  ``from . import name``
    is an edge to the submodule ``name`` when it is one, else to the
    package; the top-level ``einlocal`` package itself is not counted."""
    graph: dict[str, set[str]] = {m: set() for m in mods}

    def add(src: str, target: str) -> None:
        if target != "einlocal" and target in mods and target != src:
            graph[src].add(target)

    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("einlocal"):
                        # `import einlocal.a.b` imports einlocal.a.b (and its parents)
                        add(name, _deepest(alias.name, mods))
                continue
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base.startswith("einlocal"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(name, sub if sub in mods else _deepest(base, mods))
    return graph


def _deepest(dotted: str, mods) -> str:
    parts = dotted.split(".")
    while parts and ".".join(parts) not in mods:
        parts.pop()
    return ".".join(parts)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    color: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str):
        color[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if color.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in color:
                c = visit(t)
                if c:
                    return c
        path.pop()
        color[m] = 2
        return None

    for m in sorted(graph):
        if m not in color:
            c = visit(m)
            if c:
                return c
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph(module_files()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The checker itself: a cycle through a function-level relative import
    is found, one under TYPE_CHECKING is not, `from . import sub` points at
    the submodule, and imports of the top-level package are not counted."""
    pkg = tmp_path / "einlocal"
    sub = pkg / "backends"
    sub.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import g\n"
                              "def f():\n    from .backends import c\n")
    (pkg / "b.py").write_text("import einlocal\n")
    (sub / "__init__.py").write_text("")
    (sub / "c.py").write_text("def h():\n    from ..a import f\n")
    mods = module_files({"einlocal": pkg, "einlocal.backends": sub})
    graph = import_graph(mods)
    assert graph["einlocal.a"] == {"einlocal.backends.c"}
    assert graph["einlocal.b"] == set()
    assert find_cycle(graph) == ["einlocal.a", "einlocal.backends.c", "einlocal.a"]
    (sub / "c.py").write_text("")
    assert find_cycle(import_graph(mods)) is None


if __name__ == "__main__":   # print the graph's cycles one at a time
    g = import_graph(module_files())
    while (c := find_cycle(g)):
        print(" -> ".join(c))
        g[c[-2]].discard(c[-1])
    pytest.main([__file__, "-q"])
