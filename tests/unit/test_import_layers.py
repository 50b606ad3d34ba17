"""The package's import graph, function-local imports included, has no cycle: not between
modules, not between subpackages (DESIGN.md, "Layers"). Read with `ast`, nothing is imported."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """strata module -> the strata modules it imports anywhere in its body."""
    modules = {_module_name(p): p for p in (SRC / "strata").rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        graph[name]
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import: climb level - 1 packages from this one
                    up = package.split(".")
                    up = up[: len(up) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]  # fmt: skip
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t.startswith("strata") and t != name and t != "strata":
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def _package(module: str) -> str:
    """`strata.serving.app` -> `strata.serving`; a top-level module (`strata.config`,
    `strata.cli`) is a unit of its own."""
    return ".".join(module.split(".")[:2])


def test_no_module_cycles() -> None:
    assert cycles(import_graph()) == []


def test_no_subpackage_cycles() -> None:
    packages: dict[str, set[str]] = defaultdict(set)
    for src, targets in import_graph().items():
        for t in targets:
            if _package(src) != _package(t):
                packages[_package(src)].add(_package(t))
    assert cycles(packages) == []


def test_the_checker_sees_function_local_imports_and_cycles() -> None:
    graph = import_graph()
    # A function-local import (recommend_file's callers import it inside a function).
    assert "strata.serving.batch" in graph["strata.cli"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
