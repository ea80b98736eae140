"""`strata_api` is the contract every other Strata package imports, so it must stay a leaf: import-linter keeps it
free of Strata's other packages; this keeps it free of heavy dependencies too (the standard library, and PyYAML
for the catalog), so the extender and the workload image can import it without the operator's."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

import strata_api

ALLOWED = set(sys.stdlib_module_names) | {"__future__", "yaml", "strata_api"}
WHEN_CALLED = {"prophet.py": {"pandas", "prophet", "cmdstanpy"}}
"""Modules that import more inside a function, only when the component that carries it calls them (never at import:
the module itself stays importable where those packages are absent)."""


def test_the_contract_imports_only_the_standard_library_and_yaml() -> None:
    assert strata_api.__file__ is not None
    modules = sorted(Path(strata_api.__file__).parent.glob("*.py"))
    assert len(modules) > 1
    for module in modules:
        tree = ast.parse(module.read_text())
        at_import = _imports(node for node in tree.body if not isinstance(node, ast.FunctionDef | ast.ClassDef))
        anywhere = _imports(ast.walk(tree))
        assert at_import <= ALLOWED, f"{module.name} imports {sorted(at_import - ALLOWED)}"
        allowed = ALLOWED | WHEN_CALLED.get(module.name, set())
        assert anywhere <= allowed, f"{module.name} imports {sorted(anywhere - allowed)}"


def _imports(nodes: Iterable[ast.AST]) -> set[str]:
    imported = set()
    for node in nodes:
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in inner.names}
            elif isinstance(inner, ast.ImportFrom):
                assert inner.level == 0, "relative import"
                imported.add((inner.module or "").split(".")[0])
    return imported
