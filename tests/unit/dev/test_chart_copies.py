"""The chart ships copies of crds/, the price catalog and the scheduler's configuration (Helm cannot read outside it);
`make chart-sync` makes them, and this test fails when a copy has drifted from its source."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "strata"
SOURCES = [
    *sorted((ROOT / "crds").glob("*.yaml")),
    ROOT / "api" / "strata_api" / "catalog.yaml",
    ROOT / "scheduler" / "config" / "kube-scheduler-config.yaml",
]


def copy_of(source: Path) -> Path:
    return CHART / ("crds" if source.parent.name == "crds" else "files") / source.name


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_chart_copy_matches_its_source(source: Path) -> None:
    assert copy_of(source).read_bytes() == source.read_bytes(), f"{copy_of(source)} is stale: run make chart-sync"


def test_chart_has_no_crd_without_a_source() -> None:
    assert {p.name for p in (CHART / "crds").glob("*.yaml")} == {p.name for p in (ROOT / "crds").glob("*.yaml")}
