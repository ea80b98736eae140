"""Job traces: the public GPU-cluster traces read in place, and seeded synthetic ones.

Mapping of the Alibaba GPU trace v2023 (``openb_pod_list_default``; one row per pod) to Strata:

- one pod is one job of one worker with ``num_gpu`` GPUs (a GPU-sharing pod, ``gpu_milli < 1000``, takes one
  whole GPU: Strata does not share GPUs); pods with no GPU (CPU pods) are left out and counted;
- ``qos`` LS and Guaranteed go to the high-priority pool, BE and Burstable to the low-priority (preemptible) one;
- the work is the pod's run time, ``deletion_time - scheduled_time``, as hours on the reference GPU (the trace's
  V100/T4/P100 speeds are not known per pod); pods never scheduled (no ``scheduled_time``) are left out and
  counted, since they have no run time;
- every job accepts H100 and MI300X and every capacity type, and checkpoints every ``checkpoint_s``;
- the replay window starts at ``start_day`` (day 115: the trace's first 115 days hold 27 long-lived pods only);
  a pod still running at the window's start arrives at time 0 with the run time it had left.

Mapping of Helios Earth per-VC demand (``<vc>_cluster_sequence_vc``; per minute running and pending GPUs, no jobs):
each rise of a VC's demand (``running_gpu_num + pending_gpu_num``) is a job of that many GPUs (workers of up to 8
GPUs), and each fall ends that VC's most recent jobs first, so the replayed demand follows the trace; the VCs
named in ``high_vcs`` are high priority.
"""

from __future__ import annotations

import csv
import gzip
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from strata_sim.model import HIGH_POOL, HOUR_S, LOW_POOL, Job, SimInputError

DAY_S = 86400.0
ALIBABA_FILE = "openb_pod_list_default.dev.csv.gz"
HIGH_QOS = frozenset({"LS", "Guaranteed"})


@dataclass
class TraceSummary:
    """What a reader took and what it left out, with why."""

    jobs: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


def _rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a gzip CSV with their line numbers; a missing column names the file."""
    try:
        with gzip.open(path, "rt", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or ())]
            if missing:
                raise SimInputError(f"{path}: missing column(s) {', '.join(missing)}")
            yield from enumerate(reader, start=2)
    except (OSError, EOFError) as error:
        raise SimInputError(f"cannot read the trace {path}: {error}") from error


def _number(path: Path, line: int, row: dict[str, str], column: str, blank_ok: bool = False) -> float | None:
    value = (row.get(column) or "").strip()
    if not value and blank_ok:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise SimInputError(f"{path}: row {line}, column {column}: expected a number of zero or more, got {value!r}")
    return number


def read_alibaba(
    folder: Path, days: float, start_day: float = 115.0, checkpoint_s: float | None = 1800.0
) -> tuple[list[Job], TraceSummary]:
    """Jobs of the Alibaba GPU trace in ``[start_day, start_day + days)`` (see the module docstring)."""
    path = folder / ALIBABA_FILE
    required = ("name", "num_gpu", "qos", "creation_time", "deletion_time", "scheduled_time")
    start, end = start_day * DAY_S, (start_day + days) * DAY_S
    jobs, summary = [], TraceSummary()
    for line, row in _rows(path, required):
        gpus = _number(path, line, row, "num_gpu")
        created = _number(path, line, row, "creation_time")
        deleted = _number(path, line, row, "deletion_time")
        scheduled = _number(path, line, row, "scheduled_time", blank_ok=True)
        assert gpus is not None
        assert created is not None
        assert deleted is not None
        if gpus == 0:
            summary.skip("no GPU (CPU pod)")
            continue
        if scheduled is None:
            summary.skip("never scheduled (no run time)")
            continue
        if created >= end or deleted <= start:
            summary.skip("outside the window")
            continue
        began = max(scheduled, start)
        if deleted <= began:
            summary.skip("no run time")
            continue
        qos = row["qos"].strip()
        if not qos:
            raise SimInputError(f"{path}: row {line}, column qos: empty")
        jobs.append(
            Job(
                key=row["name"] or f"row{line}",
                arrival_s=max(created, start) - start,
                workers=1,
                gpus_per_worker=int(gpus),
                work_h=(deleted - began) / HOUR_S,
                pool=HIGH_POOL if qos in HIGH_QOS else LOW_POOL,
                checkpoint_s=checkpoint_s,
            )
        )
    summary.jobs = len(jobs)
    return jobs, summary


HELIOS_COLUMNS = ("time", "running_gpu_num", "pending_gpu_num")


def read_helios(
    folder: Path, days: float, high_vcs: Sequence[str] = ("vchbv", "vc6YE"), checkpoint_s: float | None = 1800.0
) -> tuple[list[Job], TraceSummary]:
    """Jobs that replay each VC's GPU demand (see the module docstring) over the first ``days`` days."""
    jobs, summary = [], TraceSummary()
    for path in sorted(folder.glob("*_cluster_sequence_vc.dev.csv.gz")):
        vc = path.name.split("_", 1)[0]
        pool = HIGH_POOL if vc in high_vcs else LOW_POOL
        open_jobs: list[tuple[str, float, int]] = []  # (key, arrival, GPUs), most recent last
        level, origin, count = 0, None, 0
        for line, row in _rows(path, HELIOS_COLUMNS):
            try:
                when = datetime.fromisoformat(row["time"]).timestamp()
            except ValueError as error:
                raise SimInputError(f"{path}: row {line}, column time: {error}") from error
            origin = when if origin is None else origin
            now = when - origin
            if now >= days * DAY_S:
                break
            running = _number(path, line, row, "running_gpu_num")
            pending = _number(path, line, row, "pending_gpu_num")
            assert running is not None
            assert pending is not None
            demand = int(running + pending)
            while demand > level:
                gpus = demand - level
                count += 1
                open_jobs.append((f"{vc}-{count}", now, gpus))
                level += gpus
            while demand < level and open_jobs:
                key, arrival, gpus = open_jobs.pop()
                level -= gpus
                if now > arrival:
                    jobs.append(_helios_job(key, arrival, gpus, (now - arrival) / HOUR_S, pool, checkpoint_s))
                if level < demand:  # the fall ended part of a job: the rest goes on as a job of its own
                    count += 1
                    open_jobs.append((f"{vc}-{count}", now, demand - level))
                    level = demand
        end = days * DAY_S
        for key, arrival, gpus in open_jobs:
            if end > arrival:
                jobs.append(_helios_job(key, arrival, gpus, (end - arrival) / HOUR_S, pool, checkpoint_s))
    jobs.sort(key=lambda j: (j.arrival_s, j.key))
    summary.jobs = len(jobs)
    return jobs, summary


def _helios_job(key: str, arrival: float, gpus: int, hours: float, pool: str, checkpoint_s: float | None) -> Job:
    per_worker = min(gpus, 8)
    return Job(key, arrival, -(-gpus // 8), per_worker, hours, pool, checkpoint_s)


def synthetic(
    jobs: int,
    days: float,
    seed: int = 0,
    high_share: float = 0.3,
    mean_hours: float = 2.0,
    checkpoint_s: float | None = 1800.0,
) -> list[Job]:
    """A seeded trace: Poisson arrivals over ``days``, log-normal run times with mean ``mean_hours``, gangs of
    1-4 workers of 1, 2, 4 or 8 GPUs (large gangs rarer), ``high_share`` of them high priority."""
    rng = random.Random(seed)
    sigma = 1.0
    mu = math.log(mean_hours) - sigma**2 / 2
    out = []
    for index in range(jobs):
        gpus = rng.choices((1, 2, 4, 8), weights=(0.4, 0.2, 0.2, 0.2))[0]
        workers = rng.choices((1, 2, 4), weights=(0.7, 0.2, 0.1))[0] if gpus == 8 else 1
        out.append(
            Job(
                key=f"job{index:07d}",
                arrival_s=rng.uniform(0.0, days * DAY_S),
                workers=workers,
                gpus_per_worker=gpus,
                work_h=rng.lognormvariate(mu, sigma),
                pool=HIGH_POOL if rng.random() < high_share else LOW_POOL,
                checkpoint_s=checkpoint_s,
            )
        )
    out.sort(key=lambda j: (j.arrival_s, j.key))
    return out
