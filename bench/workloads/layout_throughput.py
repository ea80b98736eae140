"""Tokens per second per layout on this machine (gloo on CPU, or NCCL when run on GPUs), same global batch,
the ratio to a single-process run, the MFU and rank 0's peak memory the workload logs with each step (on CPU the
MFU is against the matrix-product rate each run measures at start, so it moves with the machine's load).
Launches `python -m strata_workloads.train` as the operator would.

    python bench/workloads/layout_throughput.py --preset small-moe --steps 8

Every run gets the same number of torch threads in all (`--threads`, default the core count), split over its
ranks. On a machine shared with other work, a process with several OpenMP threads can lose far more than its
share (threads spin-wait for a descheduled sibling), so the single-process baseline is the most sensitive
figure here; `--threads 1` runs each rank single-threaded for a like-for-like check.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LAYOUTS: dict[str, dict[str, str]] = {
    "single process": {},
    "dp=2 (replicate)": {"STRATA_DP_REPLICATE": "2"},
    "fsdp=2": {"STRATA_DP_SHARD": "2"},
    "tp=2": {"STRATA_TP": "2"},
    "pp=2 (1f1b)": {"STRATA_PP": "2"},
    "fsdp=2, ep=2": {"STRATA_DP_SHARD": "2", "STRATA_EP": "2"},
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(layout: dict[str, str], preset: str, steps: int, tmp: Path, threads: int) -> tuple[float, float, int]:
    """The median tokens/s and MFU past the warm-up steps, and rank 0's peak memory in bytes."""
    world = 1
    for key in ("STRATA_DP_REPLICATE", "STRATA_DP_SHARD", "STRATA_TP", "STRATA_PP"):
        world *= int(layout.get(key, "1"))
    port, procs, logs = _port(), [], []
    for rank in range(world):
        env = {
            **os.environ,
            **layout,
            "STRATA_MODEL": preset,
            "STRATA_STEPS": str(steps),
            "STRATA_GLOBAL_BATCH": "8",
            "STRATA_MICRO_BATCH": "4" if world > 1 and "STRATA_TP" not in layout and "STRATA_PP" not in layout else "8",
            "STRATA_SEQ_LEN": "128",
            "STRATA_DATA_MAX_DOCS": "200",
            "STRATA_DATA_SHARDS": "8",
            "STRATA_LOG_FORMAT": "json",
            "OMP_NUM_THREADS": str(max(1, threads // world)),
            "WORLD_SIZE": str(world),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
        }
        if world > 1:
            env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        log = tmp / f"rank{rank}.log"
        logs.append(log)
        with open(log, "wb") as f:
            procs.append(subprocess.Popen([sys.executable, "-m", "strata_workloads.train"], env=env, stderr=f))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"layout {layout} failed: {logs[0].read_text()[-2000:]}")
    records = [json.loads(line) for line in logs[0].read_text().splitlines() if line.startswith("{")]
    measured = [r for r in records if r.get("msg") == "step"][2:]  # skip warm-up steps
    rate = statistics.median(float(r["tokens_per_s"]) for r in measured)
    mfu = statistics.median(float(r.get("mfu", "nan")) for r in measured)
    return rate, mfu, max(int(r["peak_memory_bytes"]) for r in measured)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small-moe")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads in all, split over the ranks"
    )
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    args = parser.parse_args()
    print("| layout | tokens/s | ratio to single process | MFU | rank 0 peak memory |")
    print("| --- | --- | --- | --- | --- |")
    base = None
    for name in args.layouts:
        with tempfile.TemporaryDirectory() as tmp:
            rate, mfu, memory = run(LAYOUTS[name], args.preset, args.steps, Path(tmp), args.threads)
        base = base or rate
        print(f"| {name} | {rate:.0f} | {rate / base:.2f} | {mfu:.1%} | {memory / 2**30:.2f} GiB |", flush=True)


if __name__ == "__main__":
    main()
