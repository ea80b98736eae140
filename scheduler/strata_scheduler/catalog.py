"""The cost catalog, as the extender reads it: one catalog, shared with the operator (which prices status.cost
from it), lives in :mod:`strata_api.catalog`, the contract both sides import."""

from __future__ import annotations

from strata_api.catalog import (
    DEFAULT_CATALOG,
    HOURS_PER_DAY,
    Catalog,
    CatalogError,
    load_catalog,
    parse_catalog,
)

__all__ = ["DEFAULT_CATALOG", "HOURS_PER_DAY", "Catalog", "CatalogError", "load_catalog", "parse_catalog"]
