"""Where a replay's idle GPU-time goes while jobs arrive (issue 21's utilisation aim): the fleet's free GPUs between
events, split by what the queue held then.

    .venv/bin/python bench/sim/idle_time.py [--policy strata] [--scale 0.5] [--days 30]

- ``no job queued``: nothing waited; only more work could have used these GPUs;
- ``a queued job fits by count``: some queued job's workers would fit the free GPUs (node by node), but it was
  kept out; split by why the pass left the first such job (in admission order) waiting, its reason:
  ``WaitingBehindEarlierJobs`` (rule 3: a waiting head reserves the GPU type it fits on), ``WaitingForGPUs``
  (the count fits only across GPU types or capacity types it may not mix or take), ``WaitingForQuota``,
  ``ReservedGPUsHeldBack`` (the hold), ``WaitingForPreemption``, or ``admitted, not placed`` (the extender's
  cheapest-first placement could not hold it);
- ``fragmented``: no queued job's workers fit the free GPUs of the nodes;
- ``held back``: of the free GPUs, those the forecast hold-back kept for high-priority demand (a part of the
  three above).

Shares are of the fleet's GPU-hours up to the last arrival (the report's ``util arr`` window).
"""

from __future__ import annotations

import argparse

from strata_api.catalog import DEFAULT_CATALOG, load_catalog
from strata_sim.__main__ import FLEET, TRACES
from strata_sim.engine import SimState, simulate
from strata_sim.model import Job, load_fleet
from strata_sim.policies import StrataPolicy, all_policies
from strata_sim.traces import read_alibaba

KINDS = ("no job queued", "a queued job fits by count", "fragmented")
UNPLACED = "admitted, not placed"


def fits_by_count(job: Job, free: dict[str, int]) -> bool:
    """Whether the job's workers fit the free GPUs node by node (its GPU type and capacity type aside)."""
    return sum(gpus // job.gpus_per_worker for gpus in free.values()) >= job.workers


class IdleTime:
    """Wraps a policy; after each pass, notes the free GPUs and why they are idle until the next event."""

    def __init__(self, inner: StrataPolicy, fleet_gpus: int, until_s: float) -> None:
        self.inner, self.name = inner, inner.name
        self.fleet_gpus, self.until_s = fleet_gpus, until_s
        self.gpu_h = dict.fromkeys((*KINDS, "held back", "fleet"), 0.0)
        self.kept_out: dict[str, float] = {}
        """GPU-hours of ``a queued job fits by count``, by the waiting reason of the first such job."""
        self._since = 0.0
        self._idle: tuple[int, str, int, str | None] | None = None

    def tick(self, now_s: float, state: SimState) -> bool:
        self._count(now_s)
        return self.inner.tick(now_s, state)

    def schedule(self, now_s: float, state: SimState) -> None:
        self._count(now_s)
        self.inner.schedule(now_s, state)
        free = dict(state.free)
        queue = list(state.queue.values())
        fitting = [j for j in queue if fits_by_count(j, free)]
        kind = KINDS[0] if not queue else KINDS[1] if fitting else KINDS[2]
        hold = self.inner._hold(state)
        held = sum(h.keep_free for h in hold.by_gpu_type.values()) if hold else 0
        self._idle = (sum(free.values()), kind, held, self._why(fitting))

    def _why(self, fitting: list[Job]) -> str | None:
        """The waiting reason of the first job, in the last pass's order, of those that fit by count."""
        decision = self.inner.decision
        if not fitting or decision is None:
            return None
        waits = [(w.position, w.reason) for j in fitting if (w := decision.waiting.get(j.key)) is not None]
        return min(waits)[1] if waits else UNPLACED

    def _count(self, now_s: float) -> None:
        since, self._since = self._since, now_s
        if self._idle is None or since >= self.until_s:
            return
        hours = (min(now_s, self.until_s) - since) / 3600
        idle, kind, held, why = self._idle
        self.gpu_h["fleet"] += self.fleet_gpus * hours
        self.gpu_h[kind] += idle * hours
        if why is not None:
            self.kept_out[why] = self.kept_out.get(why, 0.0) + idle * hours
        self.gpu_h["held back"] += min(held, idle) * hours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="strata", choices=["strata", "strata-no-holdback", "strata-no-tou"])
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--days", type=float, default=30.0)
    args = parser.parse_args()
    catalog = load_catalog(DEFAULT_CATALOG)
    fleet = load_fleet(FLEET, scale=args.scale)
    jobs, _ = read_alibaba(TRACES / "alibaba_gpu_v2023", args.days, checkpoint_s=1800.0)
    policy = all_policies(fleet, catalog)[args.policy]()
    assert isinstance(policy, StrataPolicy)
    idle = IdleTime(policy, fleet.gpus(), max(j.arrival_s for j in jobs))
    simulate(jobs, fleet, catalog, idle)
    total = idle.gpu_h.pop("fleet")
    print(f"{args.policy}: idle GPU-hours while jobs arrive, of the fleet's {total:,.0f}")
    for kind, gpu_h in idle.gpu_h.items():
        print(f"  {kind:<28} {gpu_h:>8,.0f} GPU-h  {gpu_h / total:6.1%}")
        if kind == KINDS[1]:
            for why, kept in sorted(idle.kept_out.items(), key=lambda item: -item[1]):
                print(f"    {why:<26} {kept:>8,.0f} GPU-h  {kept / total:6.1%}")


if __name__ == "__main__":
    main()
