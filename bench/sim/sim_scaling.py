"""How the simulator's run time grows with jobs and nodes: synthetic traces of growing size on fleets scaled to
keep them about as busy, each policy timed in one process, figures printed side by side: wall seconds, and in
brackets the process's CPU seconds, which a machine busy with other work inflates less.

    .venv/bin/python bench/sim/sim_scaling.py [--sizes 1000,4000,16000] [--policies default,strata-no-holdback]
"""

from __future__ import annotations

import argparse
import time

from strata_api.catalog import DEFAULT_CATALOG, load_catalog
from strata_sim.__main__ import FLEET
from strata_sim.engine import simulate
from strata_sim.model import load_fleet
from strata_sim.policies import all_policies
from strata_sim.traces import synthetic

JOBS_PER_NODE_DAY = 2.0
"""Synthetic load per node and day (mean 2 h jobs of about 4 GPUs on 8-GPU nodes: roughly half busy)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,4000,16000", help="jobs per run")
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--policies", default="default,kueue,karpenter,strata-no-holdback")
    args = parser.parse_args()
    catalog = load_catalog(DEFAULT_CATALOG)
    base_nodes = len(load_fleet(FLEET).nodes)
    print(f"{'jobs':>8} {'nodes':>6} " + " ".join(f"{name + ' s':>20}" for name in args.policies.split(",")))
    for jobs_count in (int(size) for size in args.sizes.split(",")):
        nodes = jobs_count / (JOBS_PER_NODE_DAY * args.days)
        fleet = load_fleet(FLEET, scale=max(nodes / base_nodes, 1 / base_nodes))
        jobs = synthetic(jobs_count, args.days, seed=0)
        builders = all_policies(fleet, catalog)
        timings = []
        for name in args.policies.split(","):
            started, cpu = time.perf_counter(), time.process_time()
            simulate(jobs, fleet, catalog, builders[name]())
            timings.append(f"{time.perf_counter() - started:.1f} ({time.process_time() - cpu:.1f})")
        print(f"{jobs_count:>8} {len(fleet.nodes):>6} " + " ".join(f"{t:>20}" for t in timings), flush=True)


if __name__ == "__main__":
    main()
