"""What the operator does to stay cheap at scale keeps kopf's semantics, and one price catalog serves everyone."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kopf
import pytest

from strata_api.catalog import DEFAULT_CATALOG, CatalogError, load_catalog
from strata_operator.main import LeanDiffBaseStorage
from strata_operator.settings import OperatorSettings

PREFIX = "strata.dev"


def a_body(kind: str) -> dict[str, Any]:
    return {
        "apiVersion": "strata.dev/v1alpha1",
        "kind": kind,
        "metadata": {
            "name": "j",
            "namespace": "ns",
            "uid": "u-1",
            "resourceVersion": "42",
            "labels": {"team": "a"},
            "annotations": {f"{PREFIX}/last-handled-configuration": "{}", "note": "kept", f"{PREFIX}/follow": "x"},
            "managedFields": [{"manager": "strata-operator", "fieldsV1": {"f:status": {"f:phase": {}}}}],
            "finalizers": [f"{PREFIX}/operator"],
        },
        "spec": {"pool": "p", "parallelism": {"data": 2}},
        "status": {"phase": "Running", "conditions": [{"type": "Running", "status": "True"}]},
    }


def test_the_lean_essence_is_kopfs_own_for_objects_with_daemons() -> None:
    body = kopf.Body(a_body("TrainingJob"))
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key="last-handled-configuration").build(body=body)
    lean = LeanDiffBaseStorage(prefix=PREFIX, key="last-handled-configuration").build(body=body)
    assert lean == kopfs
    assert lean["spec"] == {"pool": "p", "parallelism": {"data": 2}}


def test_the_lean_essence_follows_extra_fields_as_kopf_does() -> None:
    body = kopf.Body(a_body("TrainingJob"))
    extra = [("status", "phase")]
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key="last-handled-configuration").build(
        body=body, extra_fields=extra
    )
    assert LeanDiffBaseStorage(prefix=PREFIX).build(body=body, extra_fields=extra) == kopfs


@pytest.mark.parametrize("kind", ["Pod", "Node"])
def test_only_watched_kinds_get_no_essence(kind: str) -> None:
    assert LeanDiffBaseStorage(prefix=PREFIX).build(body=kopf.Body(a_body(kind))) == {}


def test_the_operator_prices_from_the_catalog_the_extender_reads() -> None:
    settings = OperatorSettings.from_args([], env={})
    assert settings.catalog == DEFAULT_CATALOG
    assert settings.prices == load_catalog(DEFAULT_CATALOG)
    assert settings.prices.price("p5.48xlarge", "spot") == 22.00


def test_a_catalog_flag_points_the_operator_at_another_document(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("prices: {p5.48xlarge: {spot: 10.0}}\nthroughput: {bf16: {H100: 1.0}}\n")
    settings = OperatorSettings.from_args(["--catalog", str(path)], env={})
    assert settings.prices.price("p5.48xlarge", "spot") == 10.0
    path.write_text("prices: {p5.48xlarge: {spot: -1}}\n")
    with pytest.raises(CatalogError, match=re.escape("prices.p5.48xlarge.spot")):
        _ = OperatorSettings.from_args(["--catalog", str(path)], env={}).prices


@pytest.mark.parametrize(
    ("annotation", "expected"), [("30.5", 30.5), ("-3", 22.00), ("nan", 22.00), ("free", 22.00), (None, 22.00)]
)
def test_a_nodes_price_annotation_wins_only_when_it_is_a_price(annotation: str | None, expected: float) -> None:
    """One rule for operator and extender: a positive, finite annotation overrides the catalog's row."""
    from strata_api import ANN_NODE_PRICE, NODE_CAPACITY_TYPE, NODE_INSTANCE_TYPE
    from strata_operator.core.observed import Node

    annotations = {ANN_NODE_PRICE: annotation} if annotation is not None else {}
    node = Node.from_body(
        {
            "metadata": {
                "name": "n",
                "labels": {NODE_INSTANCE_TYPE: "p5.48xlarge", NODE_CAPACITY_TYPE: "spot"},
                "annotations": annotations,
            }
        }
    )
    prices = OperatorSettings.from_args([], env={}).prices
    assert prices.node_price(node.price_per_hour, node.instance_type, node.capacity_type) == expected
