"""The CRD files parse to what the API server accepts under server-side apply: every printer column has only the
fields CustomResourceColumnDefinition declares. An unquoted flow-mapping description with a comma (``{...,
description: on trial, if any.}``) parses as an extra key, which client-side apply drops quietly and server-side
apply refuses ("field not declared in schema")."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CRDS = sorted((Path(__file__).resolve().parents[3] / "crds").glob("*.yaml"))
COLUMN_FIELDS = {"name", "type", "format", "description", "priority", "jsonPath"}
"""apiextensions.k8s.io/v1 CustomResourceColumnDefinition's fields."""


@pytest.mark.unit
@pytest.mark.parametrize("path", CRDS, ids=[p.name for p in CRDS])
def test_every_printer_column_has_only_declared_fields(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        if not document or document.get("kind") != "CustomResourceDefinition":
            continue
        for version in document["spec"]["versions"]:
            for column in version.get("additionalPrinterColumns", ()):
                assert set(column) <= COLUMN_FIELDS, (path.name, column)
                assert all(value is not None for value in column.values()), (path.name, column)
