"""Foundation figures: cold build and cache size, warm cluster start, control-plane memory, 1,000-node fleet.

    make bench-cluster            # or: .venv/bin/python bench/cluster/bench_cluster.py --starts 3 --nodes 1000

Prints a Markdown table to paste into docs/benchmarks.md. The cold build figure is the one recorded by the
build that filled the cache (`build.json` beside the binaries); re-measure it by deleting the cache folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

from strata_dev import binaries
from strata_dev.cluster import ClusterSettings, LocalCluster, core_api
from strata_dev.fleet import Fleet, create_fleet, load_fleet


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=1000)
    args = parser.parse_args()
    bin_dir = binaries.ensure(quiet=True)
    rows: list[tuple[str, str]] = []
    build = bin_dir.parent / "build.json"
    if build.exists():
        recorded = json.loads(build.read_text())
        rows.append(("cold build of all 7 binaries (recorded at cache fill)", f"{recorded['seconds']} s"))
    size = sum(p.stat().st_size for p in bin_dir.iterdir()) / 2**20
    rows.append(("binary cache size", f"{size:.0f} MiB"))

    starts = []
    for _ in range(args.starts):
        with LocalCluster(ClusterSettings(), bin_dir=bin_dir) as cluster:
            assert cluster.started_s is not None
            starts.append(cluster.started_s)
    rows.append((f"warm cluster start, median of {args.starts}", f"{statistics.median(starts):.1f} s"))

    with LocalCluster(ClusterSettings(), bin_dir=bin_dir) as cluster:
        core = core_api(cluster.kubeconfig)
        small = load_fleet()
        create_fleet(core, small)
        time.sleep(5)
        idle = {c.name: rss_mib(c.process.pid) for c in cluster.components.values()}
        rows.append((f"control-plane RSS with the default fleet ({small.size} nodes)", f"{sum(idle.values()):.0f} MiB"))
        big = load_fleet().scaled(args.nodes)
        big_only = Fleet(tuple(replace(p, name=f"bench-{p.name}") for p in big.pools))
        took = create_fleet(core, big_only, wait_ready_s=600)
        rows.append((f"create a {args.nodes}-node fleet until all Ready", f"{took:.1f} s"))
        time.sleep(5)
        loaded = {c.name: rss_mib(c.process.pid) for c in cluster.components.values()}
        rows.append((f"control-plane RSS with {args.nodes + small.size} nodes", f"{sum(loaded.values()):.0f} MiB"))
        detail = ", ".join(f"{name} {mib:.0f}" for name, mib in loaded.items())
    print(f"machine: {platform.machine()}, {Path('/proc/cpuinfo').read_text().count('processor')} cores")
    print("| figure | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"RSS by component at {args.nodes} nodes (MiB): {detail}")


if __name__ == "__main__":
    main()
