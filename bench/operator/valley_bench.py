"""Valley scheduling: what deferring saves under the shipped catalog's time-of-use table, and what a plan costs.

For jobs submitted at every quarter hour of a day (UTC), of each expected duration, with each deadline (seconds
after submission), the plan's start (:func:`strata_operator.core.valley.plan_start`) and its saving against
starting when submitted; printed side by side: the mean and largest saving, the share of jobs deferred and their
mean delay. Power only: the node's own price is the same at every hour, so the saving is a share of the run's
price. Then the time one admission pass spends planning 1,000 queued deferrable jobs over a fleet of 1,000 nodes
(zones indexed once, as the pass does).

    .venv/bin/python bench/operator/valley_bench.py [--catalog PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import strata_api as api
from strata_api import GPUType, ResourcePool, TrainingJob
from strata_api.catalog import DEFAULT_CATALOG, load_catalog
from strata_operator.core.observed import Node
from strata_operator.core.valley import fleet_zones, job_tariff, plan_job, plan_start

DAY0 = datetime(2026, 1, 1, tzinfo=UTC)
DURATIONS_H = (0.5, 1, 2, 4, 8)
DEADLINES_H = (4, 8, 12, 24)
SUBMISSIONS = [DAY0 + timedelta(minutes=15 * quarter) for quarter in range(96)]


def savings_table(catalog_path: Path) -> None:
    tariff = job_tariff(load_catalog(catalog_path), [])
    print(f"catalog {catalog_path}: default time-of-use table, jobs submitted every 15 min of one UTC day")
    print(f"{'duration':>9} {'deadline':>9} {'mean saving':>12} {'max saving':>11} {'deferred':>9} {'mean delay':>11}")
    for duration_h in DURATIONS_H:
        for deadline_h in DEADLINES_H:
            if deadline_h < duration_h:
                continue
            duration = timedelta(hours=duration_h)
            deadline = timedelta(hours=deadline_h)
            plans = [(s, plan_start(s, s, s + deadline, duration, tariff)) for s in SUBMISSIONS]
            savings = [p.saving for _, p in plans]
            delays = [(p.start - s).total_seconds() / 3600 for s, p in plans]
            deferred = [d for d in delays if d > 0]
            print(
                f"{duration_h:>8}h {deadline_h:>8}h {statistics.mean(savings):>11.2%} {max(savings):>10.2%} "
                f"{len(deferred) / len(plans):>8.0%} {statistics.mean(deferred) if deferred else 0:>10.2f}h"
            )


def planning_time(catalog_path: Path, jobs: int = 1000, nodes: int = 1000) -> None:
    catalog = load_catalog(catalog_path)
    fleet = [
        Node(f"n{i}", GPUType.H100, "reserved", 8, True, None, "p5.48xlarge", zone=f"zone-{i % 3}")
        for i in range(nodes)
    ]
    pool = ResourcePool.from_body(
        {
            "metadata": {"name": "pool"},
            "spec": {
                "priority": 0,
                "maxGPUs": 1000,
                "gpuTypes": ["H100"],
                "capacityTypes": ["spot", "on-demand", "reserved"],
                "preemptible": False,
            },
        }
    )
    job = TrainingJob.from_body(_job_body())
    now = DAY0 + timedelta(hours=17)
    started = time.perf_counter()
    zones = fleet_zones(fleet)
    for _ in range(jobs):
        plan_job(job, pool, zones, catalog, now)
    elapsed = time.perf_counter() - started
    print(f"one admission pass planning {jobs} deferrable jobs over {nodes} nodes: {elapsed:.3f} s")


def _job_body() -> dict[str, object]:
    return {
        "metadata": {"name": "j", "namespace": "bench", "uid": "u", "creationTimestamp": api.format_time(DAY0)},
        "spec": {
            "pool": "pool",
            "workload": {"image": "registry.example/w:1", "preset": "debug", "imagePullPolicy": "IfNotPresent"},
            "parallelism": {"data": 1, "tensor": 8, "pipeline": 1, "expert": 1, "microBatches": 1,
                            "pipelineSchedule": "1f1b"},
            "training": {"globalBatchSize": 8, "microBatchSize": 1, "steps": 10, "precision": "bf16",
                         "activationCheckpointing": "none", "gradientClipping": 1.0, "learningRate": 3e-4},
            "checkpoint": {"intervalSeconds": 600, "keep": 3, "path": "/checkpoints"},
            "resources": {"gpus": 8, "gpusPerWorker": 8, "gpuType": "H100",
                          "capacityTypes": ["spot", "on-demand", "reserved"], "capacityPreference": "none"},
            "backoffLimit": 3,
            "suspend": False,
            "scheduling": {"deferrable": True, "deadlineSeconds": 86400, "expectedDurationSeconds": 7200},
        },
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    args = parser.parse_args()
    savings_table(args.catalog)
    planning_time(args.catalog)


if __name__ == "__main__":
    main()
