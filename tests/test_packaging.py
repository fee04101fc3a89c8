"""The runtime package installs with ``pip install .`` alone (README's first command)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions, requires
from pathlib import Path

NODE = Path(__file__).resolve().parents[1] / "node"


class _Imports(ast.NodeVisitor):
    """Top-level modules imported at run time (``if TYPE_CHECKING:`` blocks are for the type checker)."""

    def __init__(self) -> None:
        self.modules: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.orelse:
                self.visit(statement)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.modules.update(alias.name.split(".")[0] for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.modules.add(node.module.split(".")[0])


def _imported_top_level_modules() -> set[str]:
    """Every top-level module ``node/`` imports at run time, at module level or inside functions."""
    imports = _Imports()
    for path in NODE.rglob("*.py"):
        imports.visit(ast.parse(path.read_text(encoding="utf-8")))
    return imports.modules


def _runtime_requirements() -> set[str]:
    """Distribution names (normalised) the installed ``dicomnode`` requires without any extra."""
    declared = set()
    for requirement in requires("dicomnode") or []:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]
        declared.add(re.sub(r"[-_.]+", "-", name).lower())
    return declared


def test_every_third_party_import_of_the_runtime_is_a_runtime_dependency() -> None:
    """A module ``node/`` imports must come from a distribution in ``[project] dependencies``.

    An extra (``train``, ``dev``) is not enough: ``pip install -e . && dicomnode serve`` on a fresh
    machine installs none of them. torch in particular must never be imported by the runtime.
    """
    third_party = _imported_top_level_modules() - set(sys.stdlib_module_names) - {"node"}
    assert "torch" not in third_party
    providers = packages_distributions()
    declared = _runtime_requirements()
    missing = {
        module: providers.get(module, [])
        for module in sorted(third_party)
        if not {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(module, [])} & declared
    }
    assert not missing, f"imported by node/ but not a runtime dependency: {missing}"
