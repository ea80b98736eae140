"""`strata_api` is the contract every other Strata package imports, so it must stay a leaf: import-linter keeps it
free of Strata's other packages; this keeps it free of heavy dependencies too (the standard library, and PyYAML
for the catalog), so the extender and the workload image can import it without the operator's."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import strata_api

ALLOWED = set(sys.stdlib_module_names) | {"__future__", "yaml", "strata_api"}


def test_the_contract_imports_only_the_standard_library_and_yaml() -> None:
    assert strata_api.__file__ is not None
    modules = sorted(Path(strata_api.__file__).parent.glob("*.py"))
    assert len(modules) > 1
    for module in modules:
        tree = ast.parse(module.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{module.name}: relative import"
                imported.add((node.module or "").split(".")[0])
        assert imported <= ALLOWED, f"{module.name} imports {sorted(imported - ALLOWED)}"
