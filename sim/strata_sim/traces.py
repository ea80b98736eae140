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
named in ``high_vcs`` are high priority. Times without a zone are read as UTC (the replay must not depend on the
machine's zone), and the replay window ends at ``days`` or one row's step after the file's last row, whichever is
first: demand the file does not hold is not made up.

Bad input stops the reader with :class:`SimInputError` naming the file, the row (its line in the decompressed file,
the header being line 1) and the column: a missing or repeated column, a row of the wrong width, a cell that is not
UTF-8, a number that is not one (or not whole where a count is meant), times that go backwards or contradict each
other, an unknown ``qos``, a pod name used twice, a run longer than :data:`MAX_DAYS`.
"""

from __future__ import annotations

import csv
import gzip
import math
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from strata_sim.model import HIGH_POOL, HOUR_S, LOW_POOL, Job, SimInputError

DAY_S = 86400.0
MAX_DAYS = 3650.0
"""The longest replay window and the longest job run time, in days: the replay ticks every 5 minutes, so ten years
is a million ticks, and a longer one (a typo'd timestamp, ``--days 1e9``) would not finish."""
ALIBABA_FILE = "openb_pod_list_default.dev.csv.gz"
HELIOS_GLOB = "*_cluster_sequence_vc.dev.csv.gz"
HIGH_QOS = frozenset({"LS", "Guaranteed"})
LOW_QOS = frozenset({"BE", "Burstable"})


@dataclass
class TraceSummary:
    """What a reader took and what it left out, with why."""

    jobs: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


def _rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a gzip CSV, each with its line number in the decompressed file (the header is line 1; blank lines
    count, a quoted cell across lines counts its last). A missing column, a row whose width is not the header's,
    a cell that is not UTF-8 text, or a file that ends early names the file, and the row and column where known."""
    line = 1
    try:
        # surrogateescape: a byte that is not UTF-8 reaches the cell it is in, so the message can name the column
        with gzip.open(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader, None)
                if not header:
                    raise SimInputError(f"{path}: empty; expected a header row with the columns {', '.join(required)}")
                _check_text(path, 1, header, header)
                missing = [c for c in required if c not in header]
                if missing:
                    raise SimInputError(
                        f"{path}: missing column(s) {', '.join(missing)} (the header, row 1, has {', '.join(header)})"
                    )
                twice = sorted({c for c in header if header.count(c) > 1})
                if twice:
                    raise SimInputError(f"{path}: row 1: column(s) {', '.join(twice)} more than once in the header")
                for cells in reader:
                    line = reader.line_num
                    if not cells:
                        continue
                    if len(cells) != len(header):
                        absent = f"; no column {header[len(cells)]}" if len(cells) < len(header) else ""
                        raise SimInputError(
                            f"{path}: row {line}: {len(cells)} cells, the header has {len(header)}{absent}"
                        )
                    _check_text(path, line, header, cells)
                    yield line, dict(zip(header, cells, strict=True))
            except csv.Error as error:
                raise SimInputError(f"{path}: row {reader.line_num}: {error}") from error
    except (OSError, EOFError, zlib.error) as error:
        after = f" after row {line}" if line > 1 else ""
        raise SimInputError(f"cannot read the trace {path}{after}: {error}") from error


def _check_text(path: Path, line: int, header: Sequence[str], cells: Sequence[str]) -> None:
    if "".join(cells).isascii():
        return
    for column, cell in zip(header, cells, strict=True):
        try:
            cell.encode("utf-8")
        except UnicodeEncodeError:
            where = "the header" if line == 1 else f"column {column}"
            raise SimInputError(f"{path}: row {line}, {where}: not UTF-8 text: {cell!r}") from None


def _number(
    path: Path, line: int, row: dict[str, str], column: str, blank_ok: bool = False, whole: bool = False
) -> float | None:
    """The cell as a finite number of zero or more (a whole one with ``whole``); None for a blank with
    ``blank_ok``."""
    value = row[column].strip()
    if not value and blank_ok:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0 or (whole and not number.is_integer()):
        kind = "a whole number" if whole else "a number"
        raise SimInputError(f"{path}: row {line}, column {column}: expected {kind} of zero or more, got {value!r}")
    return number


def read_alibaba(
    folder: Path, days: float, start_day: float = 115.0, checkpoint_s: float | None = 1800.0
) -> tuple[list[Job], TraceSummary]:
    """Jobs of the Alibaba GPU trace in ``[start_day, start_day + days)`` (see the module docstring). Every row is
    checked, in the window or not: a bad row elsewhere in the file is still a bad file."""
    path = folder / ALIBABA_FILE
    required = ("name", "num_gpu", "qos", "creation_time", "deletion_time", "scheduled_time")
    start, end = start_day * DAY_S, (start_day + days) * DAY_S
    jobs, summary = [], TraceSummary()
    first_row: dict[str, int] = {}
    for line, row in _rows(path, required):
        gpus = _number(path, line, row, "num_gpu", whole=True)
        created = _number(path, line, row, "creation_time")
        deleted = _number(path, line, row, "deletion_time")
        scheduled = _number(path, line, row, "scheduled_time", blank_ok=True)
        assert gpus is not None
        assert created is not None
        assert deleted is not None
        _check_times(path, line, row, created, scheduled, deleted)
        qos = row["qos"].strip()
        if qos not in HIGH_QOS | LOW_QOS:
            known = ", ".join(sorted(HIGH_QOS | LOW_QOS))
            raise SimInputError(f"{path}: row {line}, column qos: expected one of {known}, got {qos!r}")
        key = row["name"].strip() or f"row{line}"
        if key in first_row:
            raise SimInputError(f"{path}: row {line}, column name: {key!r} is also the name of row {first_row[key]}")
        first_row[key] = line
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
        jobs.append(
            Job(
                key=key,
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


def _check_times(
    path: Path, line: int, row: dict[str, str], created: float, scheduled: float | None, deleted: float
) -> None:
    """A pod is scheduled at or after its creation and deleted at or after both, within :data:`MAX_DAYS`."""
    if scheduled is not None and scheduled < created:
        raise SimInputError(
            f"{path}: row {line}, column scheduled_time: {row['scheduled_time']} is before creation_time "
            f"{row['creation_time']}"
        )
    began, column = (created, "creation_time") if scheduled is None else (scheduled, "scheduled_time")
    if deleted < began:
        raise SimInputError(
            f"{path}: row {line}, column deletion_time: {row['deletion_time']} is before {column} {row[column]}"
        )
    if deleted - began > MAX_DAYS * DAY_S:
        raise SimInputError(
            f"{path}: row {line}, column deletion_time: {row['deletion_time']} is more than {MAX_DAYS:,.0f} days "
            f"after {column} {row[column]} (seconds from the trace's start are expected)"
        )


HELIOS_COLUMNS = ("time", "running_gpu_num", "pending_gpu_num")


def read_helios(
    folder: Path, days: float, high_vcs: Sequence[str] = ("vchbv", "vc6YE"), checkpoint_s: float | None = 1800.0
) -> tuple[list[Job], TraceSummary]:
    """Jobs that replay each VC's GPU demand (see the module docstring) over the first ``days`` days."""
    files = sorted(folder.glob(HELIOS_GLOB))
    if not files:
        raise SimInputError(f"{folder}: no {HELIOS_GLOB} file (--traces names the folder that holds this one)")
    jobs, summary = [], TraceSummary()
    for path in files:
        vc = path.name.split("_", 1)[0]
        pool = HIGH_POOL if vc in high_vcs else LOW_POOL
        open_jobs: list[tuple[str, float, int]] = []  # (key, arrival, GPUs), most recent last
        level, origin, count = 0, None, 0
        end, now, step = days * DAY_S, 0.0, 0.0
        for line, row in _rows(path, HELIOS_COLUMNS):
            when = _helios_time(path, line, row)
            origin = when if origin is None else origin
            if when - origin < now:
                raise SimInputError(f"{path}: row {line}, column time: {row['time']} is before the previous row's time")
            now, step = when - origin, when - origin - now
            if now >= end:
                break
            running = _number(path, line, row, "running_gpu_num", whole=True)
            pending = _number(path, line, row, "pending_gpu_num", whole=True)
            assert running is not None
            assert pending is not None
            demand = int(running) + int(pending)
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
        else:  # the file ended inside the window: its last row holds for one step, as every row before it did
            end = min(end, now + step)
        for key, arrival, gpus in open_jobs:
            if end > arrival:
                jobs.append(_helios_job(key, arrival, gpus, (end - arrival) / HOUR_S, pool, checkpoint_s))
    jobs.sort(key=lambda j: (j.arrival_s, j.key))
    summary.jobs = len(jobs)
    return jobs, summary


def _helios_time(path: Path, line: int, row: dict[str, str]) -> float:
    """The row's time in seconds; a time without a zone is UTC."""
    text = row["time"].strip()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise SimInputError(
            f"{path}: row {line}, column time: expected a date and time (2020-05-01 00:00:00), got {text!r}"
        ) from None
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


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
