"""No import circle between the modules of one package.

Every import statement counts, at module level or inside a function (a deferred import hides a
circle from Python, not from the design), and so do imports under `if TYPE_CHECKING:`. An import
names the deepest module of the package it reaches: `from worker.parallel import mesh` is an
edge to `worker.parallel.mesh`, `from worker.engine import WanEngine` one to `worker.engine`.

Nor between the parts of a package, a subpackage counted whole: a module of `worker.parallel` importing
`worker.engine`, which imports `worker.parallel.messages`, is no circle of modules but one of parts
(`worker.parallel` -> `worker.engine` -> `worker.parallel`): the subpackage could not be read, tested or
moved without the module that uses it (the follower rank's main is worker/follower.py for this reason).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["api", "shared", "wanq", "worker"]


def modules_of(package: str, root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file, for every module of `package` (its subpackages included)."""
    modules: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of the same package that module `name` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *filter(None, [base])])
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def circular_groups(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or not (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group: set[str] = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def circle_through(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = group[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        next_frontier = []
        for node in frontier:
            for succ in sorted(graph[node] & set(group)):
                if succ == start:
                    return [*paths[node], start]
                if succ not in paths:
                    paths[succ] = [*paths[node], succ]
                    next_frontier.append(succ)
        frontier = next_frontier
    raise AssertionError(f"no circle through {sorted(group)}")


def import_graph(package: str) -> dict[str, set[str]]:
    modules = modules_of(package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def part_of(name: str, package: str) -> str:
    """The part of `package` that module `name` belongs to: a module directly in it, or a whole subpackage."""
    return ".".join(name.split(".")[: len(package.split(".")) + 1])


def parts_graph(graph: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    """The import graph between the parts of `package` (its modules and subpackages, each subpackage one node);
    the package's own `__init__` is left out, as an import of a part through it names the part."""
    parts: dict[str, set[str]] = {}
    for name, targets in graph.items():
        if name == package:
            continue
        edges = parts.setdefault(part_of(name, package), set())
        edges.update(part_of(t, package) for t in targets if t != package)
    for part, edges in parts.items():
        edges.discard(part)
        for target in edges:
            parts.setdefault(target, set())
    return parts


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle_between_modules_of_a_package(package: str) -> None:
    graph = import_graph(package)
    groups = circular_groups(graph)
    assert not groups, "modules that import each other:\n" + "\n".join(
        f"{', '.join(group)}: {' -> '.join(circle_through(group, graph))}" for group in groups
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle_between_the_parts_of_a_package(package: str) -> None:
    graph = parts_graph(import_graph(package), package)
    groups = circular_groups(graph)
    assert not groups, "parts (modules, subpackages) that import each other:\n" + "\n".join(
        f"{', '.join(group)}: {' -> '.join(circle_through(group, graph))}" for group in groups
    )


def test_the_checker_finds_a_circle_through_a_subpackage(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "leaf.py").write_text("X = 1\n")
    (package / "sub" / "user.py").write_text("from pkg.engine import run\n")
    (package / "engine.py").write_text("from pkg.sub.leaf import X\n")
    (package / "other.py").write_text("import pkg\nfrom pkg.sub import leaf\n")
    modules = modules_of("pkg", tmp_path)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert circular_groups(graph) == []  # no circle of modules
    parts = parts_graph(graph, "pkg")
    assert parts == {"pkg.sub": {"pkg.engine"}, "pkg.engine": {"pkg.sub"}, "pkg.other": {"pkg.sub"}}
    assert circular_groups(parts) == [["pkg.engine", "pkg.sub"]]
    assert circle_through(["pkg.engine", "pkg.sub"], parts) == ["pkg.engine", "pkg.sub", "pkg.engine"]


def test_the_checker_finds_a_circle_through_a_deferred_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from .c import g\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg.a import x\n")
    modules = modules_of("pkg", tmp_path)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert graph["pkg.d"] == {"pkg.a"}
    assert circular_groups(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert circle_through(["pkg.a", "pkg.b", "pkg.c"], graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
