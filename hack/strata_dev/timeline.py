"""The demo's view of its TrainingJobs over time: each phase change printed as it happens, and waits on them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from strata_dev.cluster import LocalCluster


class Timeline:
    """Prints each job's phase changes in ``namespace`` as they happen (seconds since the timeline began: the demo
    begins it when it submits the jobs) and answers questions about what it last saw."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.started = time.monotonic()
        self.statuses: dict[str, dict[str, Any]] = {}
        """Each job's status as last fetched."""
        self.phases: dict[str, str] = {}
        self.said: dict[str, tuple[str, str]] = {}
        """What was printed last per job: its phase and why (a queued job's reason changes as admission runs)."""
        self.history: dict[str, list[str]] = {}
        """Every phase each job was seen in, in order."""

    def follow(self, done: Callable[[], bool], timeout_s: float) -> None:
        """Poll until ``done()`` holds (it reads what the poll fetched) or ``timeout_s`` passes, printing every
        change."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._poll()
            if done() or time.monotonic() > deadline:
                return
            time.sleep(0.5)

    def _poll(self) -> None:
        for job in self.cluster.kubectl_json("trainingjobs", "-n", self.namespace)["items"]:
            name, status = job["metadata"]["name"], job.get("status") or {}
            self.statuses[name] = status
            phase = status.get("phase")
            why = status.get("message") or status.get("reason") or ""
            position = f" (queue position {status['queuePosition']})" if status.get("queuePosition") else ""
            if not phase or self.said.get(name) == (phase, why + position):
                continue
            self.phases[name], self.said[name] = phase, (phase, why + position)
            self.history.setdefault(name, []).append(phase)
            print(f"  {time.monotonic() - self.started:5.1f}s  {name:14} {phase:10} {why}{position}", flush=True)

    def settled(self) -> bool:
        """Every job Running, or waiting in the queue with its position and reason, or done."""
        statuses = list(self.statuses.values())
        phases = [s.get("phase") for s in statuses]
        queued_known = all(s.get("queuePosition") for s in statuses if s.get("phase") == "Queued")
        known = all(p in {"Running", "Queued", "Succeeded", "Failed"} for p in phases)
        return bool(statuses) and known and queued_known and "Running" in phases

    def running(self) -> list[str]:
        return sorted(n for n, p in self.phases.items() if p == "Running")

    def waiting(self) -> list[str]:
        return sorted(n for n, p in self.phases.items() if p in ("Queued", "Admitted"))

    def finished(self) -> list[str]:
        return sorted(n for n, p in self.phases.items() if p in ("Succeeded", "Failed"))

    def all_finished(self) -> bool:
        return bool(self.phases) and len(self.finished()) == len(self.phases)

    def last_checkpoint_step(self, job: str) -> int | None:
        """The step of ``job``'s last checkpoint as its status reports it."""
        step = (self.statuses.get(job, {}).get("lastCheckpoint") or {}).get("step")
        return step if isinstance(step, int) else None

    def restarted_and_running(self, job: str) -> bool:
        """``job`` went through Restarting and runs again."""
        return "Restarting" in self.history.get(job, []) and self.phases.get(job) == "Running"
