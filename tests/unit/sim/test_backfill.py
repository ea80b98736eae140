"""The simulator gives admission each job's run time as its estimate (``expectedDurationSeconds``) and the pass's
moment, so rule 3's backfill decides in the replay as on the control plane."""

from __future__ import annotations

from strata_api import GPUType
from strata_api.catalog import parse_catalog
from strata_sim.engine import simulate
from strata_sim.model import HIGH_POOL, HOUR_S, LOW_POOL, Fleet, Job, SimNode
from strata_sim.policies import StrataPolicy

RUNS = [
    ("hi", 0, 8, 5, HIGH_POOL),
    ("b1", 0, 4, 2, LOW_POOL),
    ("b2", 0, 4, 0.05, LOW_POOL),
    ("c1", 0, 4, 5, LOW_POOL),
    ("gang", 0.1, 8, 1, LOW_POOL),
    ("short", 0.2, 1, 1, LOW_POOL),
    ("long", 0.3, 1, 3, LOW_POOL),
]
"""Jobs as (key, arrival h, GPUs of their one worker, hours on H100, pool)."""


def test_a_short_job_backfills_ahead_of_a_waiting_gang_and_a_long_one_waits_for_it() -> None:
    """Three 8-GPU nodes, a to c. From 0 a high-priority job holds a for 5 h; best fit puts ``b1`` (4 GPUs, 2 h)
    and ``b2`` (4 GPUs, 3 minutes) on b and ``c1`` (4 GPUs, 5 h) on c. ``gang`` (8 GPUs, low priority) arrives
    at 0.1 h, when b and c have 4 free GPUs each: it could start at 2 h, when ``b1`` ends, and reserves H100.
    ``short`` (1 GPU, 1 h, at 0.2 h) ends by 1.2 h, before that: it starts at once. ``long`` (1 GPU, 3 h, at
    0.3 h) would end at 3.3 h: it waits until the gang has started on b at 2 h, then takes a GPU of c."""
    catalog = parse_catalog({"prices": {"p5.48xlarge": {"reserved": 80.0}}, "throughput": {"bf16": {"H100": 1.0}}})
    fleet = Fleet(tuple(SimNode(f"{n}-reserved", GPUType.H100, "reserved", "p5.48xlarge", 8) for n in "abc"))
    jobs = [Job(key, at * HOUR_S, 1, gpus, h, pool, gpu_types=(GPUType.H100,)) for key, at, gpus, h, pool in RUNS]

    outcome = simulate(jobs, fleet, catalog, StrataPolicy(fleet, catalog, None))

    starts = {r.job.key: r.first_start_s / HOUR_S for r in outcome.records if r.first_start_s is not None}
    assert starts == {"hi": 0.0, "b1": 0.0, "b2": 0.0, "c1": 0.0, "gang": 2.0, "short": 0.2, "long": 2.0}
