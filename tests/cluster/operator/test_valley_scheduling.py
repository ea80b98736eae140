"""Valley scheduling on the real control plane: a deferrable job waits for the cheap power window, a plain one
does not.

The operator runs with a catalog whose time-of-use table makes one hour cheap and with ``--tariff-offset-s`` set
so that the cheap tariff hour begins ``LEAD_S`` seconds after the test starts (a utility whose hours do not start
on UTC hours, here one that suits the test), so the window is seconds away, not up to an hour.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_support import ClusterHandle, eventually
from kubernetes.client.exceptions import ApiException
from operator_harness import OperatorProcess, Strata, cleaned_up_then_stopped
from operator_manifests import a_job

import strata_api as api
from strata_api.catalog import DEFAULT_CATALOG, HOURS_PER_DAY
from strata_operator.core.admission import Reason

LEAD_S = 30
"""Seconds from the test's start to the cheap tariff hour: long enough for the operator to start and decide."""


def catalog_with_a_cheap_hour(folder: Path, hour: int) -> Path:
    """The shipped catalog with every tariff hour at 1.0 but ``hour`` at 0.5."""
    document = yaml.safe_load(DEFAULT_CATALOG.read_text())
    document["power"] = {"default": [0.5 if h == hour else 1.0 for h in range(HOURS_PER_DAY)], "zones": {}}
    path = folder / "catalog.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def deferred(status: dict[str, Any]) -> dict[str, Any] | None:
    return status if status.get("reason") == Reason.WAITING_FOR_CHEAPER_POWER else None


def test_a_deferrable_job_waits_queued_for_the_cheap_window_while_a_plain_one_runs_at_once(
    crds: ClusterHandle, namespace: str, strata: Strata, tmp_path: Path
) -> None:
    window = math.ceil(time.time()) + LEAD_S
    offset = window % 3600  # tariff hours begin at `window`, and at every hour from it
    cheap_hour = (window - offset) // 3600 % HOURS_PER_DAY
    flags = ("--standalone", "--catalog", str(catalog_with_a_cheap_hour(tmp_path, cheap_hour)))
    operator = OperatorProcess(crds, tmp_path, (namespace,), *flags, "--tariff-offset-s", str(offset)).start()
    try:
        pool = strata.pool("valley", priority=5, maxGPUs=64)
        scheduling = {"deferrable": True, "expectedDurationSeconds": 600, "deadlineSeconds": 3000}
        strata.submit(a_job("nightly", pool, scheduling=scheduling))
        strata.submit(a_job("urgent", pool))

        urgent = strata.wait_phase("urgent", "Admitted", "Running", timeout_s=LEAD_S - 5)
        waiting = eventually(lambda: deferred(strata.status("nightly")), 10, "nightly Queued for cheaper power")
        assert waiting["phase"] == "Queued", waiting
        expected_start = datetime.fromtimestamp(window, UTC)
        assert waiting["expectedStart"] == api.format_time(expected_start)
        assert waiting["message"].startswith(
            f"deferred to the cheapest time-of-use power window that meets its deadline: "
            f"{api.format_time(expected_start)} to "
        )
        assert "at a mean multiplier of 0.5 " in waiting["message"]
        # kopf posts Events in the background, after the status write this test has already seen
        eventually(lambda: Reason.WAITING_FOR_CHEAPER_POWER in strata.events("nightly"), 10, "the job's Event")
        assert urgent["admittedAt"] < waiting["expectedStart"]

        admitted = strata.wait_phase("nightly", "Admitted", "Running", timeout_s=LEAD_S + 30)
        assert admitted["admittedAt"] >= waiting["expectedStart"]
        eventually(lambda: strata.pods("nightly"), 30, "the deferred job's worker pod")
    finally:
        cleaned_up_then_stopped(strata, operator)


def test_the_api_server_refuses_a_deadline_on_a_job_that_is_not_deferrable_and_takes_the_example(
    crds: ClusterHandle, strata: Strata
) -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "valley" / "nightly-finetune.yaml"
    crds.kubectl("apply", "--dry-run=server", "-n", strata.namespace, "-f", str(example))
    pool = strata.pool("valley", priority=5, maxGPUs=64)
    with pytest.raises(ApiException) as refused:
        strata.submit(a_job("late", pool, scheduling={"deadlineSeconds": 3600}))
    assert "spec.scheduling.deadline and deadlineSeconds require spec.scheduling.deferrable true" in refused.value.body
    with pytest.raises(ApiException) as refused:
        strata.submit(a_job("vague", pool, scheduling={"deferrable": True}))
    assert "spec.scheduling.expectedDurationSeconds is required" in refused.value.body
