"""The runtime's packages import one another in one direction: no package import cycle in node/."""

from __future__ import annotations

import ast
from pathlib import Path

NODE = Path(__file__).resolve().parents[1] / "node"


def package_imports() -> dict[str, set[str]]:
    """For each top-level part of ``node`` (a package or a module), the other parts it imports."""
    edges: dict[str, set[str]] = {}
    for path in NODE.rglob("*.py"):
        source = path.relative_to(NODE).parts[0].removesuffix(".py")
        for statement in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(statement, ast.ImportFrom) and statement.level == 0 and statement.module:
                names = [statement.module]
            elif isinstance(statement, ast.Import):
                names = [alias.name for alias in statement.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "node" and len(parts) > 1 and parts[1] != source:
                    edges.setdefault(source, set()).add(parts[1])
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every package that can reach itself, with one path back to it."""
    found = []
    for start in sorted(edges):
        seen: set[str] = set()
        stack = [(start, [start])]
        while stack:
            current, path = stack.pop()
            for following in sorted(edges.get(current, ())):
                if following == start:
                    found.append([*path, start])
                    stack.clear()
                    break
                if following not in seen:
                    seen.add(following)
                    stack.append((following, [*path, following]))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    """A two-package loop is reported (so an empty answer below means something)."""
    assert cycles({"reports": {"pipeline"}, "pipeline": {"reports", "store"}}) == [
        ["pipeline", "reports", "pipeline"],
        ["reports", "pipeline", "reports"],
    ]


def test_no_package_of_node_imports_itself_through_another() -> None:
    """Imports go one way (ARCHITECTURE.md): no package of node/ reaches itself through its imports."""
    edges = package_imports()
    assert "pipeline" in edges and "store" in edges  # the walk saw the packages
    assert cycles(edges) == []
