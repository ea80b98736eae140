"""Where a replay's idle GPU-time goes while jobs arrive (issue 21's utilisation aim): the fleet's free GPUs between
events, split by what the queue held then.

    .venv/bin/python bench/sim/idle_time.py [--policy strata] [--scale 0.5] [--days 30]

- ``no job queued``: nothing waited; only more work could have used these GPUs;
- ``a queued job fits by count``: some queued job's workers would fit the free GPUs (node by node), but it was
  kept out (priority order, a waiting head's reserved GPU type, quota, the hold-back);
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


def fits_by_count(job: Job, free: dict[str, int]) -> bool:
    """Whether the job's workers fit the free GPUs node by node (its GPU type and capacity type aside)."""
    return sum(gpus // job.gpus_per_worker for gpus in free.values()) >= job.workers


class IdleTime:
    """Wraps a policy; after each pass, notes the free GPUs and why they are idle until the next event."""

    def __init__(self, inner: StrataPolicy, fleet_gpus: int, until_s: float) -> None:
        self.inner, self.name = inner, inner.name
        self.fleet_gpus, self.until_s = fleet_gpus, until_s
        self.gpu_h = dict.fromkeys((*KINDS, "held back", "fleet"), 0.0)
        self._since = 0.0
        self._idle: tuple[int, str, int] | None = None

    def tick(self, now_s: float, state: SimState) -> bool:
        self._count(now_s)
        return self.inner.tick(now_s, state)

    def schedule(self, now_s: float, state: SimState) -> None:
        self._count(now_s)
        self.inner.schedule(now_s, state)
        free = dict(state.free)
        queue = list(state.queue.values())
        kind = KINDS[0] if not queue else KINDS[1] if any(fits_by_count(j, free) for j in queue) else KINDS[2]
        hold = self.inner._hold(state)
        held = sum(h.keep_free for h in hold.by_gpu_type.values()) if hold else 0
        self._idle = (sum(free.values()), kind, held)

    def _count(self, now_s: float) -> None:
        since, self._since = self._since, now_s
        if self._idle is None or since >= self.until_s:
            return
        hours = (min(now_s, self.until_s) - since) / 3600
        idle, kind, held = self._idle
        self.gpu_h["fleet"] += self.fleet_gpus * hours
        self.gpu_h[kind] += idle * hours
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


if __name__ == "__main__":
    main()
