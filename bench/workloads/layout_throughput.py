"""Tokens per second per layout on this machine (gloo on CPU, or NCCL when run on GPUs), same global batch,
and the ratio to a single-process run. Launches `python -m strata_workloads.train` as the operator would.

    python bench/workloads/layout_throughput.py --preset small-moe --steps 8
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


def run(layout: dict[str, str], preset: str, steps: int, tmp: Path) -> float:
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
            "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // world)),
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
    rates = [
        float(r["tokens_per_s"])
        for r in (json.loads(line) for line in logs[0].read_text().splitlines() if line.startswith("{"))
        if r.get("msg") == "step"
    ]
    return statistics.median(rates[2:])  # skip warm-up steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small-moe")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    print("| layout | tokens/s | ratio to single process |")
    print("| --- | --- | --- |")
    base = None
    for name, layout in LAYOUTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            rate = run(layout, args.preset, args.steps, Path(tmp))
        base = base or rate
        print(f"| {name} | {rate:.0f} | {rate / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
