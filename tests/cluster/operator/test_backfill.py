"""Rule 3's backfill on the real control plane: the operator reads each TrainingJob's
``spec.scheduling.expectedDurationSeconds`` and its admission time, so a job expected to end before a waiting gang
could start goes first on the gang's GPU type, and one that would end later waits behind it, saying why. The default
fleet has 4 H100 nodes of 8 GPUs; every job here takes whole H100 nodes."""

from __future__ import annotations

from cluster_support import eventually
from operator_harness import OperatorProcess, Strata
from operator_manifests import a_job

HOUR_S = 3600


def test_a_job_expected_to_end_before_the_waiting_gang_could_start_goes_first(
    operator: OperatorProcess, strata: Strata
) -> None:
    pool = strata.pool("team")
    strata.submit(a_job("first", pool, data=3, scheduling={"expectedDurationSeconds": 2 * HOUR_S}))  # 3 of 4 nodes
    strata.wait_phase("first", "Running")
    strata.submit(a_job("gang", pool, data=2))  # 2 nodes: could start in 2 h, when "first" is expected to end
    eventually(lambda: strata.status("gang").get("reason") == "WaitingForGPUs", 20, "the gang waits for GPUs")

    strata.submit(a_job("long", pool, scheduling={"expectedDurationSeconds": 3 * HOUR_S}))
    reason = eventually(lambda: strata.status("long").get("reason"), 20, "the long job's reason")
    assert reason == "WaitingBehindEarlierJobs"
    assert "by its expectedDurationSeconds it would not end before they could start" in strata.status("long")["message"]

    strata.submit(a_job("short", pool, scheduling={"expectedDurationSeconds": HOUR_S}))
    strata.wait_phase("short", "Running")
    assert strata.status("gang")["phase"] == "Queued"
    assert strata.status("long")["phase"] == "Queued"
