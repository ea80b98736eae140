"""Two replicas with kopf peering: one acts, the other stands by and takes over when the first stops."""

from __future__ import annotations

from pathlib import Path

from cluster_support import ClusterHandle, eventually
from operator_harness import OperatorProcess, Strata, cleaned_up_then_stopped
from operator_manifests import a_job


def paused(log: str) -> bool:
    """By kopf's own log: a replica starts paused, resumes when it is the one to act, pauses for a higher peer."""
    return log.rfind("Pausing operations") >= log.rfind("Resuming operations")


def test_the_standby_replica_takes_over_when_the_active_one_stops(
    crds: ClusterHandle, strata: Strata, tmp_path: Path
) -> None:
    names = (strata.namespace,)
    peering = ("--peering-name", f"strata-{strata.suffix}")
    active = OperatorProcess(crds, tmp_path / "a", names, *peering, "--priority", "10")
    standby = OperatorProcess(crds, tmp_path / "b", names, *peering, "--priority", "1")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    active.start()
    standby.start()
    try:
        eventually(lambda: "Resuming operations" in active.log(), 60, "the active replica to run")
        pool = strata.pool("team")
        strata.submit(a_job("before", pool, data=2))
        strata.wait_phase("before", "Running")
        assert [p.metadata.name for p in strata.pods("before")] == ["before-worker-0", "before-worker-1"]

        assert paused(standby.log())
        assert not paused(active.log())

        active.stop()  # graceful: it leaves the peering at once
        strata.submit(a_job("after", pool, data=1))
        strata.wait_phase("after", "Running", timeout_s=60)
        assert standby.alive()
        assert len(strata.pods("before")) == 2
    finally:
        cleaned_up_then_stopped(strata, active, standby)
