"""Launch `python -m strata_workloads.train` the way the operator does: one process per rank with WORLD_SIZE,
RANK, LOCAL_RANK, MASTER_ADDR/PORT and STRATA_* set, and read back each step's loss from the JSON logs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BASE_SETTINGS = {
    "STRATA_MODEL": "debug",
    "STRATA_STEPS": "6",
    "STRATA_GLOBAL_BATCH": "4",
    "STRATA_MICRO_BATCH": "2",
    "STRATA_SEQ_LEN": "32",
    "STRATA_PP_MICROBATCHES": "2",
    "STRATA_LR": "0.01",
    "STRATA_WARMUP_STEPS": "2",
    "STRATA_DATA_MAX_DOCS": "60",
    "STRATA_DATA_SHARDS": "8",
    "STRATA_CHECKPOINT_EVERY_STEPS": "3",
    "STRATA_LOG_FORMAT": "json",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Job:
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    codes: list[int] = field(default_factory=list)

    def wait(self, timeout: float = 600) -> list[int]:
        self.codes = [p.wait(timeout=timeout) for p in self.procs]
        return self.codes

    def records(self, rank: int = 0) -> list[dict[str, object]]:
        out = []
        for line in self.logs[rank].read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def losses(self) -> dict[int, float]:
        return {int(r["step"]): float(r["loss"]) for r in self.records() if r.get("msg") == "step"}  # type: ignore[arg-type]

    def wait_for_step(self, step: int, timeout: float = 420) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if max(self.losses(), default=0) >= step:
                return
            if any(p.poll() is not None for p in self.procs):
                raise AssertionError("a rank exited early: " + self.logs[0].read_text()[-3000:])
            time.sleep(0.2)
        raise TimeoutError(f"step {step} not reached")

    def kill(self) -> None:
        """Test clean-up: no rank outlives a failed test."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def terminate(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)


def launch(tmp: Path, name: str, world: int, **settings: str) -> Job:
    port = free_port()
    procs, logs = [], []
    for rank in range(world):
        env = {
            **os.environ,
            **BASE_SETTINGS,
            **{f"STRATA_{k.upper()}": v for k, v in settings.items()},
            "WORLD_SIZE": str(world),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        log = tmp / f"{name}-rank{rank}.log"
        logs.append(log)
        with open(log, "wb") as f:
            procs.append(
                subprocess.Popen([sys.executable, "-m", "strata_workloads.train"], env=env, stdout=f, stderr=f)
            )
    return Job(procs, logs)
