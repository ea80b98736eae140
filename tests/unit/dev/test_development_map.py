"""docs/development.md's map of the packages says what import-linter enforces: each package's layers, in the
contract's order, and every module of the tree in the map's tables. A layer added to a contract, or a module
added to a package, fails here until the map says so."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
MAP = (ROOT / "docs" / "development.md").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONTRACTS = PYPROJECT["tool"]["importlinter"]["contracts"]
PACKAGE_DIRS: dict[str, str] = {
    package: folder.split("/")[0] for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items()
}


def map_row(package: str) -> str:
    match = re.search(rf"^\| `{package}` \| (.*)$", MAP, re.MULTILINE)
    assert match, f"docs/development.md has no row for {package}"
    return match.group(1)


def test_each_package_row_shows_its_layers_in_the_contract_order() -> None:
    layered = [c for c in CONTRACTS if c["type"] == "layers"]
    assert {c["containers"][0] for c in layered} == set(PACKAGE_DIRS) - {"strata_api"}
    for contract in layered:
        package = contract["containers"][0]
        expected = " > ".join(
            ", ".join(f"`{module.strip()}`" for module in layer.split("|")) for layer in contract["layers"]
        )
        assert map_row(package).startswith(expected + " |"), f"{package}: the map's layers are not {expected}"


def test_the_contract_table_names_every_module_of_strata_api() -> None:
    modules = {p.stem for p in (ROOT / "api" / "strata_api").glob("*.py")}
    named = set(re.findall(r"^\| (?:`strata_api`)? *\| `(\w+)`", MAP, re.MULTILINE))
    assert modules == named
