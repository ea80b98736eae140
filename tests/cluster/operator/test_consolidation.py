"""A pool's ``consolidation`` on the real control plane (admission's rule 11): a job that started on on-demand GPUs
while the spot node was busy moves to the spot node when it frees, through the real operator, the extender and
the kube-scheduler running the shipped strata-scheduler profile; a job with too little time left stays."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cluster_support import ClusterHandle, eventually
from operator_harness import OperatorProcess, Strata, cleaned_up_then_stopped
from operator_manifests import a_job

import strata_api as api
from strata_scheduler.service import ExtenderService


def node_of(strata: Strata, job: str) -> str:
    (pod,) = strata.live_pods(job)
    return str(pod.spec.node_name)


def test_a_job_on_on_demand_moves_to_the_spot_node_when_it_frees(
    crds: ClusterHandle,
    namespace: str,
    strata: Strata,
    extender_and_scheduler: ExtenderService,
    on_demand_node: tuple[str, str],
    tmp_path: Path,
) -> None:
    spot, on_demand = on_demand_node
    pool = strata.pool(
        "thrifty",
        gpuTypes=["H100"],
        capacityTypes=["spot", "on-demand"],
        consolidation={"minRemainingSeconds": 3600, "afterSeconds": 0},
    )

    def job(name: str, expected_s: int) -> dict[str, Any]:
        return a_job(name, pool, data=1, scheduling={"expectedDurationSeconds": expected_s})

    flags = ("--standalone", "--scheduler-name", api.SCHEDULER_NAME, "--extender-url", extender_and_scheduler.url)
    operator = OperatorProcess(crds, tmp_path, (namespace,), *flags, "--quote-timeout-s", "5").start()
    try:
        strata.submit(job("first", 7200))
        strata.wait_phase("first", "Running")
        assert node_of(strata, "first") == spot  # the cheaper kind
        strata.submit(job("mover", 7200))
        strata.wait_phase("mover", "Running")
        assert node_of(strata, "mover") == on_demand  # the only room left
        assert strata.status("mover")["attempt"] == 1

        strata.exit_workers("first", 0)  # the spot node frees: the mover, 2 h left, goes there
        moved = eventually(
            lambda: {c["type"]: c for c in strata.status("mover").get("conditions", [])}.get("Preempted"),
            60,
            "the mover's Preempted condition",
        )
        assert moved["message"].startswith("moved to cheaper capacity: H100 spot holds its 1 workers x 8 GPUs now")
        eventually(lambda: "Preempted" in strata.events("mover"), 10, "the mover's Preempted Event")
        status = eventually(
            lambda: (s := strata.status("mover")).get("attempt") == 2 and s.get("phase") == "Running" and s,
            90,
            "the mover running again",
        )
        assert node_of(strata, "mover") == spot

        # a job expected to end within the hour stays where it started: the restart would cost more than it saves
        strata.submit(job("short", 1800))
        strata.wait_phase("short", "Running")
        assert node_of(strata, "short") == on_demand
        strata.exit_workers("mover", 0)
        strata.wait_phase("mover", "Succeeded")
        deadline = time.monotonic() + 10  # twenty admission passes at the harness's half-second interval
        while time.monotonic() < deadline:
            status = strata.status("short")
            assert (status.get("attempt"), status.get("phase")) == (1, "Running"), status
            time.sleep(0.5)
        assert node_of(strata, "short") == on_demand
    finally:
        cleaned_up_then_stopped(strata, operator)
