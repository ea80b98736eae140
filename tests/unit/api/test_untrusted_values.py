"""Values the operator reads are bounded where they are defined: a worker's progress annotation is read, never
trusted (whatever a buggy or hostile worker writes there reports nothing rather than crash the operator's pod cache
or its status writes; issue 18: a step of 2^70 made orjson raise in every reconcile), and the runtime limit the
operator clamps to is the one the CRDs enforce."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
import yaml

import strata_api as api
from strata_api.workload import MAX_STEP, Progress

CRDS = Path(__file__).resolve().parents[3] / "crds"


def test_a_step_past_int64_reports_nothing_and_what_is_read_can_be_written_back() -> None:
    progress = Progress.parse(json.dumps({"step": 2**70, "checkpointStep": 2**64}))
    assert progress == Progress()
    largest = Progress.parse(json.dumps({"step": MAX_STEP, "checkpointStep": MAX_STEP}))
    assert largest.step == largest.checkpoint_step == 2**63 - 1
    orjson.dumps({"progress": {"step": largest.step}})  # the operator's status encoder takes it


@pytest.mark.parametrize(
    "value",
    [
        '{"step": -1}',
        '{"step": true}',
        '{"step": 1.5}',
        '{"step": "12"}',
        '{"step": 1e400}',
        '{"step": ' + "9" * 5000 + "}",  # past Python's digit limit for int()
        "[" * 100_000 + "]" * 100_000,  # nested past the parser's recursion limit
        "[1, 2]",
        "not json",
    ],
    ids=["negative", "bool", "float", "string", "huge-float", "5000-digits", "deep-nesting", "a-list", "garbage"],
)
def test_a_malformed_report_reports_nothing(value: str) -> None:
    assert Progress.parse(value).step is None


def spec_schema(crd: str) -> dict[str, object]:
    document = yaml.safe_load((CRDS / crd).read_text())
    schema: dict[str, object] = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def test_the_crds_bound_runtimes_by_the_limit_the_operator_clamps_to() -> None:
    for crd in ("trainingjob.yaml", "resourcepool.yaml"):
        field = spec_schema(crd)["properties"]["maxRuntimeSeconds"]  # type: ignore[index]
        assert field["maximum"] == api.MAX_RUNTIME_SECONDS, crd


@pytest.mark.parametrize(
    ("field", "hostile"),
    [
        ("tokensPerSecond", "-5"),
        ("tokensPerSecond", "1e999"),
        ("mfu", "1.5"),
        ("mfu", "-0.1"),
        ("mfu", '"0.4"'),
        ("peakMemoryBytes", "-1"),
        ("peakMemoryBytes", str(2**64)),
        ("peakMemoryBytes", "1.5"),
        ("validationLoss", "true"),
        ("validationLoss", str(10**400)),
    ],
)
def test_a_figure_out_of_its_range_reports_nothing_and_leaves_the_rest_of_the_report(field: str, hostile: str) -> None:
    report = Progress.parse(f'{{"step": 7, "loss": 2.5, "{field}": {hostile}}}')
    assert report == Progress(step=7, loss=2.5)


def test_figures_in_range_are_read_and_can_be_written_back() -> None:
    report = Progress.parse(
        '{"step": 7, "tokensPerSecond": 0, "mfu": 1, "peakMemoryBytes": 9223372036854775807, "validationLoss": -0.5}'
    )
    assert (report.tokens_per_second, report.mfu, report.peak_memory_bytes, report.validation_loss) == (
        0.0,
        1.0,
        MAX_STEP,
        -0.5,
    )
    orjson.dumps({"progress": {"peakMemoryBytes": report.peak_memory_bytes}})
