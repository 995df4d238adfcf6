"""No module of the `wanq` package imports another that imports it back, directly or around a longer circle,
counting imports inside functions too (they hide a circle from Python, not from a reader)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def import_graph(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """Each module of `package` (dotted name, under `root`) -> the modules of `package` it imports anywhere in its text."""
    folder = root / package.replace(".", "/")
    modules = {
        ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): path for path in folder.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                    base = f"{parent}.{base}" if base else parent
                # `from pkg import mod` imports the module pkg.mod; `from pkg.mod import name` imports pkg.mod.
                found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles, each as the path from a module back to itself (one per strongly connected group)."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                circle = [*path[path.index(nxt) :], nxt]
                if not set(circle) <= done:
                    found.append(circle)
                    done.update(circle)
            elif nxt not in done:
                visit(nxt, [*path, nxt])

    for start in sorted(graph):
        visit(start, [start])
    return found


def test_the_checker_sees_a_circle_through_a_function_level_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import f\n")
    (package / "b.py").write_text("def f():\n    from . import c\n")
    (package / "c.py").write_text("def g():\n    from pkg import a\n")
    (package / "d.py").write_text("import pkg.a\n")
    graph = import_graph("pkg", tmp_path)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}, "pkg.d": {"pkg.a"}}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    (package / "c.py").write_text("")
    assert cycles(import_graph("pkg", tmp_path)) == []


@pytest.mark.parametrize("package", ["wanq"])
def test_no_import_cycles(package: str) -> None:
    graph = import_graph(package)
    assert graph.get(f"{package}.cli"), "the graph found no imports: the checker is broken"
    circles = cycles(graph)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)
