"""The TrainingJob's ``status.progress`` schema holds exactly what the operator writes there, within the bounds
``Progress.parse`` keeps: a figure the API server would refuse can never reach a status write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from strata_api.workload import MAX_STEP, Progress
from strata_operator.core.lifecycle import progress_summary

CRD = Path(__file__).resolve().parents[3] / "crds" / "trainingjob.yaml"


def progress_schema() -> dict[str, Any]:
    version = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    return dict(status["properties"]["progress"]["properties"])


def test_every_field_the_operator_writes_is_in_the_schema_with_the_bounds_parse_keeps() -> None:
    everything = Progress(1, None, None, 2.0, 3.0, 0.5, 4, 5.0)
    written = progress_summary([Progress.parse(everything.encode())])
    schema = progress_schema()
    assert set(written) == set(schema)
    assert (schema["mfu"]["minimum"], schema["mfu"]["maximum"]) == (0, 1)
    assert schema["tokensPerSecond"]["minimum"] == 0
    assert (schema["peakMemoryBytes"]["type"], schema["peakMemoryBytes"]["format"]) == ("integer", "int64")
    assert schema["peakMemoryBytes"]["minimum"] == 0
    assert Progress.parse(f'{{"peakMemoryBytes": {MAX_STEP + 1}}}').peak_memory_bytes is None
    for name, field in schema.items():
        assert field.get("description"), name


def test_kubectl_get_wide_shows_the_figures() -> None:
    columns = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["additionalPrinterColumns"]
    paths = {c["jsonPath"] for c in columns}
    assert {".status.progress.tokensPerSecond", ".status.progress.mfu", ".status.progress.validationLoss"} <= paths
