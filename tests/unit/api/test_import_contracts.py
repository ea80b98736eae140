"""import-linter keeps the layering of docs/development.md ("What may import what"). This proves the contracts bite
where a hole once was: an import of the operator inside the contract's catalog module passed every contract while
the contract lived inside the operator. The check runs lint-imports on a copy of the packages with that one import
added, and on the unchanged copy as a control."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SOURCE_DIRS = ("api", "operator", "scheduler", "workloads", "serving", "hack")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(tree / d) for d in SOURCE_DIRS)}
    command = [str(Path(sys.executable).with_name("lint-imports")), "--config", str(tree / "pyproject.toml")]
    return subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("tree")
    for folder in SOURCE_DIRS:
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__", "gomod"))
    shutil.copy(ROOT / "pyproject.toml", copy)
    return copy


@pytest.mark.timeout(600)
def test_the_contracts_hold_on_the_tree_and_break_on_an_operator_import_inside_the_contract(tree: Path) -> None:
    control = lint_imports(tree)
    assert control.returncode == 0, control.stdout[-2000:] + control.stderr[-2000:]
    catalog = tree / "api" / "strata_api" / "catalog.py"
    catalog.write_text(
        catalog.read_text().replace("import yaml\n", "import yaml\n\nimport strata_operator.runtime.kube\n")
    )
    broken = lint_imports(tree)
    assert broken.returncode != 0
    assert "strata_api is a leaf" in broken.stdout
    assert "strata_api.catalog -> strata_operator.runtime.kube" in broken.stdout
    assert "The scheduler imports no operator or workload module BROKEN" in broken.stdout.replace("\n", " ")
