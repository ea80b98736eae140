"""`strata_operator.api` is the one operator module the extender may import (import-linter ignores that edge),
so it must stay standalone: standard library only, never another module of the operator."""

from __future__ import annotations

import ast
import sys

import strata_operator.api


def test_the_api_contract_imports_only_the_standard_library() -> None:
    assert strata_operator.api.__file__ is not None
    with open(strata_operator.api.__file__) as source:
        tree = ast.parse(source.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports would reach into the operator"
            imported.add((node.module or "").split(".")[0])
    assert imported - {"__future__"} <= sys.stdlib_module_names, imported - set(sys.stdlib_module_names)
