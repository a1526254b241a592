"""The package has no import cycles, lazy (function-level) imports included (issue 12): a module that
needs another at call time is still a dependency a reader has to follow."""

from __future__ import annotations

import ast
from pathlib import Path

import skelcli


def _graph() -> dict[str, set[str]]:
    root = Path(skelcli.__file__).parent
    mods: dict[str, Path] = {}
    for p in root.rglob("*.py"):
        parts = ("skelcli", *p.relative_to(root).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("skelcli"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            # a package's own submodules (skelcli.methods -> skelcli.methods.mae) and a module's parents are not edges
            graph[m] |= {t for t in targets if t in mods and t != m and not m.startswith(t + ".") and not t.startswith(m + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = _graph()
    assert "skelcli.data.clips" in graph["skelcli.methods.base"]  # the finder sees real edges (a top-level import)
    assert "skelcli.methods.base" in graph["skelcli.engine.train"]  # ... and function-level ones
    assert _cycles(graph) == []
