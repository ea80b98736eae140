"""The simulator on traces small enough to work out by hand: waits, costs, lost work, gangs, preemption, hold-back.

Every test uses a catalog with flat power and no reclaims (unless it says otherwise), H100 only: a reserved node
costs $80 per node-hour ($10 per GPU-hour) and a spot node $40 ($5 per GPU-hour).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from strata_api import Consolidation, GPUType
from strata_api.catalog import Catalog, parse_catalog
from strata_scheduler.forecasting import predict
from strata_sim.__main__ import main
from strata_sim.engine import JobRecord, Outcome, Policy, SimState, simulate
from strata_sim.model import HIGH_POOL, HOUR_S, LOW_POOL, Fleet, Job, PowerClock, SimInputError, SimNode, load_fleet
from strata_sim.policies import (
    EPOCH,
    HoldBackSettings,
    KueuePolicy,
    StrataPolicy,
    all_policies,
    default_scheduler,
    karpenter_like,
    pools,
)
from strata_sim.report import AimRatios, Figures, aim_ratios, aims_table, figures
from strata_sim.traces import read_alibaba, read_helios

pytestmark = pytest.mark.timeout(30)

H100 = (GPUType.H100,)


def a_catalog(spot_hazard: float = 0.0) -> Catalog:
    return parse_catalog(
        {
            "prices": {"p5.48xlarge": {"reserved": 80.0, "on-demand": 120.0, "spot": 40.0}},
            "throughput": {"bf16": {"H100": 1.0, "MI300X": 0.85}},
            "interruption": {"hazardPerHour": {"spot": spot_hazard}},
        }
    )


def a_fleet(*kinds: str) -> Fleet:
    """One 8-GPU H100 node per capacity type given, named so that name order is the order given."""
    return Fleet(
        tuple(SimNode(f"{chr(97 + i)}-{kind}", GPUType.H100, kind, "p5.48xlarge", 8) for i, kind in enumerate(kinds))
    )


def a_job(key: str, at_h: float, hours: float, workers: int = 1, pool: str = LOW_POOL, **kw: object) -> Job:
    return Job(key, at_h * HOUR_S, workers, 8, hours, pool, gpu_types=H100, **kw)  # type: ignore[arg-type]


def every_policy(fleet: Fleet, catalog: Catalog) -> dict[str, Policy]:
    return {
        "default": default_scheduler(),
        "kueue": KueuePolicy(pools(fleet)),
        "karpenter": karpenter_like(catalog),
        "strata": StrataPolicy(fleet, catalog, None),
    }


def starts(outcome: Outcome) -> dict[str, float]:
    return {r.job.key: -1 if r.first_start_s is None else r.first_start_s / HOUR_S for r in outcome.records}


def test_two_nodes_three_jobs_exact_waits_and_costs_per_policy() -> None:
    """A and B start at once, C waits half an hour for the first to finish. Reserved is paid for the whole 2 h
    ($160); what differs is which jobs each policy puts on spot ($40 per job-hour there): strata and kueue fill
    the free reserved node first (strata: it is sunk cost), karpenter takes the lower list price."""
    catalog, fleet = a_catalog(), a_fleet("reserved", "spot")
    jobs = [a_job("A", 0, 1.0), a_job("B", 0, 1.0), a_job("C", 0.5, 1.0)]
    spot_jobs = {"default": 1, "kueue": 1, "karpenter": 2, "strata": 1}
    for name, policy in every_policy(fleet, catalog).items():
        outcome = simulate(jobs, fleet, catalog, policy)
        assert starts(outcome) == {"A": 0.0, "B": 0.0, "C": 1.0}, name
        result = figures(outcome, catalog)
        assert result.end_h == 2.0
        assert result.total_cost == pytest.approx(160.0 + 40.0 * spot_jobs[name]), name
        assert result.mean_wait_h[LOW_POOL] == pytest.approx(0.5 / 3), name
        assert result.mean_jct_h == pytest.approx((1 + 1 + 1.5) / 3), name
        assert result.cost_per_useful_gpu_h == pytest.approx(result.total_cost / 24.0)
        assert result.utilisation == pytest.approx(24.0 / 32.0)


def test_strata_fills_free_reserved_gpus_first_as_they_are_paid_anyway_and_karpenter_takes_the_list_price() -> None:
    """The reserved node costs $80 an hour used or not: a job there adds $0, on spot $40 (the same $160 of
    reserved plus $40). Strata prices reserved at its marginal cost (0) and so does not pay the $40."""
    catalog, fleet = a_catalog(), a_fleet("reserved", "spot")
    jobs = [a_job("A", 0, 1.0)]
    placed = {
        name: simulate(jobs, fleet, catalog, policy).records[0].capacity
        for name, policy in every_policy(fleet, catalog).items()
    }
    assert placed == {"default": "reserved", "kueue": "reserved", "karpenter": "spot", "strata": "reserved"}
    strata = figures(simulate(jobs, fleet, catalog, StrataPolicy(fleet, catalog, None)), catalog)
    assert strata.total_cost == pytest.approx(80.0)


def test_jobs_that_ask_for_reserved_and_spot_only_wait_for_them_rather_than_take_on_demand() -> None:
    """Two whole-node jobs of an hour at once on a spot and an on-demand node: Strata runs them side by side
    ($40 + $120); as ``strata-no-on-demand`` (every job's capacityTypes reserved and spot) the second waits an
    hour for the spot node ($80 in all, mean JCT 1.5 h)."""
    catalog, fleet = a_catalog(), a_fleet("spot", "on-demand")
    jobs = [a_job("A", 0, 1.0), a_job("B", 0, 1.0)]
    builders = all_policies(fleet, catalog)
    both = simulate(jobs, fleet, catalog, builders["strata"]())
    assert starts(both) == {"A": 0.0, "B": 0.0}
    assert figures(both, catalog).total_cost == pytest.approx(160.0)
    spot_only = simulate(jobs, fleet, catalog, builders["strata-no-on-demand"]())
    assert starts(spot_only) == {"A": 0.0, "B": 1.0}
    assert {r.capacity for r in spot_only.records} == {"spot"}
    result = figures(spot_only, catalog)
    assert (result.total_cost, result.mean_jct_h) == (pytest.approx(80.0), pytest.approx(1.5))


def test_only_jobs_expected_to_run_long_wait_for_reserved_or_spot_as_strata_long_no_on_demand() -> None:
    """S (1 h) holds the spot node when L (10 h, over the 8-hour line) arrives: Strata puts L on on-demand at once
    ($40 + $1,200); ``strata-long-no-on-demand`` has L wait 0.9 h for the spot node ($40 + $400). A short job
    with the node busy still takes on-demand."""
    catalog, fleet = a_catalog(), a_fleet("spot", "on-demand")
    jobs = [a_job("S", 0, 1.0), a_job("L", 0.1, 10.0)]
    builders = all_policies(fleet, catalog)
    strata = simulate(jobs, fleet, catalog, builders["strata"]())
    assert starts(strata) == {"S": 0.0, "L": 0.1}
    assert figures(strata, catalog).total_cost == pytest.approx(40.0 + 1200.0)
    long_waits = simulate(jobs, fleet, catalog, builders["strata-long-no-on-demand"]())
    assert starts(long_waits) == {"S": 0.0, "L": pytest.approx(1.0)}
    assert figures(long_waits, catalog).total_cost == pytest.approx(40.0 + 400.0)
    short = simulate([a_job("S", 0, 1.0), a_job("T", 0.1, 2.0)], fleet, catalog, builders["strata-long-no-on-demand"]())
    assert starts(short) == {"S": 0.0, "T": 0.1}
    assert {r.job.key: r.capacity for r in short.records} == {"S": "spot", "T": "on-demand"}


def test_a_job_on_on_demand_moves_to_the_spot_node_when_it_frees_as_strata_consolidate() -> None:
    """S (1 h) holds the spot node when M (5 h, under the 8-hour line) arrives at 0.1 h: M takes on-demand. At 1 h
    S ends; M, expected to run 4.1 h more (over the hour of ``consolidateMinRemainingSeconds``), is moved there. It
    saved its checkpoint at 0.6 h and loses the 0.4 h since, so it runs 4.5 h more on spot and ends at 5.5 h:
    $40 (S) + 0.9 h x $120 + 4.5 h x $40 = $328, against $640 with M on on-demand throughout. With 5 hours the
    least time left to move for, M stays."""
    catalog, fleet = a_catalog(), a_fleet("spot", "on-demand")
    jobs = [a_job("S", 0, 1.0), a_job("M", 0.1, 5.0)]
    builders = all_policies(fleet, catalog)
    stays = simulate(jobs, fleet, catalog, builders["strata-long-no-on-demand"]())
    assert figures(stays, catalog).total_cost == pytest.approx(40.0 + 600.0)
    policy = builders["strata-consolidate"]()
    moves = simulate(jobs, fleet, catalog, policy)
    assert isinstance(policy, StrataPolicy)
    assert (policy.consolidations, policy.preemptions.total()) == (1, 0)
    record = {r.job.key: r for r in moves.records}["M"]
    assert (record.capacity, record.interruptions) == ("spot", 1)
    assert record.finish_s == pytest.approx(5.5 * HOUR_S)
    assert record.lost_gpu_h == pytest.approx(0.4 * 8)
    assert figures(moves, catalog).total_cost == pytest.approx(40.0 + 108.0 + 180.0)
    late = simulate(
        jobs,
        fleet,
        catalog,
        all_policies(fleet, catalog, consolidation=Consolidation(5 * 3600))["strata-consolidate"](),
    )
    assert figures(late, catalog).total_cost == pytest.approx(40.0 + 600.0)


def test_strata_quotes_gpu_types_by_the_cheapest_node_with_room_now_as_the_extender_does() -> None:
    """X fills the H100 reserved node. Y accepts H100 and MI300X: H100 has only on-demand left ($15 per GPU-hour of
    work), MI300X a spot node ($5 / 0.85 = $5.9): the extender's quote, which prices the nodes with room, says
    MI300X, so Y runs there rather than on H100 on-demand, the type whose cheapest kind (reserved) is full."""
    catalog = parse_catalog(
        {
            "prices": {
                "p5.48xlarge": {"reserved": 80.0, "on-demand": 120.0},
                "Standard_ND96isr_MI300X_v5": {"spot": 40.0},
            },
            "throughput": {"bf16": {"H100": 1.0, "MI300X": 0.85}},
        }
    )
    fleet = Fleet(
        (
            SimNode("a-reserved", GPUType.H100, "reserved", "p5.48xlarge", 8),
            SimNode("b-on-demand", GPUType.H100, "on-demand", "p5.48xlarge", 8),
            SimNode("c-spot", GPUType.MI300X, "spot", "Standard_ND96isr_MI300X_v5", 8),
        )
    )
    jobs = [a_job("X", 0, 10.0), Job("Y", 0.5 * HOUR_S, 1, 8, 1.0)]
    records = {r.job.key: r for r in simulate(jobs, fleet, catalog, StrataPolicy(fleet, catalog, None)).records}
    assert (records["X"].capacity, records["Y"].gpu_type, records["Y"].capacity) == ("reserved", GPUType.MI300X, "spot")


def test_one_pass_gives_each_job_the_first_node_kind_that_holds_it_counting_the_jobs_before_it() -> None:
    """Issue 21, finding 6. W fills the H100 reserved node, X holds 7 of the MI300X reserved node's 8 GPUs. A and B
    (one GPU each, H100 or MI300X) arrive together, so one admission pass decides both on one quote: node kinds
    with room by cost per unit of work, MI300X reserved ($0: paid anyway), H100 spot ($5), MI300X on-demand
    ($12 / 0.85 = $14.1). A takes the last MI300X reserved GPU; B goes to H100 spot. Admission by type sent B to
    MI300X as well (the quote's first type, which still had room on on-demand)."""
    catalog = parse_catalog(
        {
            "prices": {
                "p5.48xlarge": {"reserved": 80.0, "spot": 40.0},
                "Standard_ND96isr_MI300X_v5": {"reserved": 64.0, "on-demand": 96.0},
            },
            "throughput": {"bf16": {"H100": 1.0, "MI300X": 0.85}},
        }
    )
    fleet = Fleet(
        (
            SimNode("a-reserved", GPUType.H100, "reserved", "p5.48xlarge", 8),
            SimNode("b-reserved", GPUType.MI300X, "reserved", "Standard_ND96isr_MI300X_v5", 8),
            SimNode("c-spot", GPUType.H100, "spot", "p5.48xlarge", 8),
            SimNode("d-on-demand", GPUType.MI300X, "on-demand", "Standard_ND96isr_MI300X_v5", 8),
        )
    )
    jobs = [
        a_job("W", 0, 10.0),
        Job("X", 0, 1, 7, 10.0, gpu_types=(GPUType.MI300X,)),
        Job("A", 0.5 * HOUR_S, 1, 1, 1.0),
        Job("B", 0.5 * HOUR_S, 1, 1, 1.0),
    ]
    policy = StrataPolicy(fleet, catalog, None)
    records = {r.job.key: r for r in simulate(jobs, fleet, catalog, policy).records}
    assert {key: (records[key].gpu_type, records[key].capacity) for key in "AB"} == {
        "A": (GPUType.MI300X, "reserved"),
        "B": (GPUType.H100, "spot"),
    }
    assert records["A"].first_start_s == records["B"].first_start_s == 0.5 * HOUR_S
    assert (policy.dearer, policy.dearer_kept_off, policy.unplaced) == (0, 0, 0)


def test_an_interruption_loses_exactly_the_work_since_the_last_checkpoint() -> None:
    catalog, fleet = a_catalog(), a_fleet("spot")
    state = SimState(fleet, catalog, PowerClock(catalog))
    job = a_job("A", 0, 2.0, checkpoint_s=600.0)
    state.records["A"] = JobRecord(job)
    state.queue["A"] = job
    state.place(job, GPUType.H100, "a-spot", 1)
    state.now_s = 1500.0  # 2 checkpoints (1200 s) saved, 300 s lost
    state.preempt("A")
    record = state.records["A"]
    assert record.done_h == pytest.approx(1200 / 3600)
    assert record.lost_gpu_h == pytest.approx(300 / 3600 * 8)
    assert "A" in state.queue
    assert state.free["a-spot"] == 8
    assert state.usage_cost == pytest.approx(40.0 * 1500 / 3600)


def test_strata_preempts_low_priority_and_the_victim_resumes_from_its_checkpoint() -> None:
    """L (low, 4 h, checkpoints every 30 min) runs alone; H (high) arrives at 0.75 h: strata preempts L, which
    keeps 0.5 h, loses 0.25 h x 8 GPUs, and finishes at 1.75 + 3.5 = 5.25 h. Kueue-like does not preempt."""
    catalog, fleet = a_catalog(), a_fleet("reserved")
    jobs = [a_job("L", 0, 4.0), a_job("H", 0.75, 1.0, pool=HIGH_POOL)]
    policy = StrataPolicy(fleet, catalog, None)
    strata = {r.job.key: r for r in simulate(jobs, fleet, catalog, policy).records}
    assert policy.preemptions == {("L", "H"): 1}  # what the report counts, and a livelock would multiply
    assert strata["H"].first_start_s == pytest.approx(0.75 * HOUR_S)
    assert strata["L"].lost_gpu_h == pytest.approx(0.25 * 8)
    assert strata["L"].finish_s == pytest.approx(5.25 * HOUR_S)
    kueue = {r.job.key: r for r in simulate(jobs, fleet, catalog, KueuePolicy(pools(fleet))).records}
    assert kueue["H"].first_start_s == pytest.approx(4.0 * HOUR_S)
    assert kueue["L"].lost_gpu_h == 0


def test_a_gang_waiting_past_defragment_after_moves_a_one_gpu_job_and_starts_an_hour_later_not_a_hundred() -> None:
    """E (8 GPUs, 1 h) fills the reserved node, so O (1 GPU, 100 h) starts on spot; after E, S (7 GPUs, 100 h)
    takes 7 of the reserved GPUs, and W (8 GPUs) finds no node with 8 free. With defragmentAfterSeconds of 1 h
    strata moves O onto the reserved node's last GPU (moving S would move 7) and W starts on spot an hour after
    its arrival (by the next 5-minute tick); O loses only the minutes since its last checkpoint. Without it W
    waits for O's 100 hours."""
    catalog, fleet = a_catalog(), a_fleet("reserved", "spot")

    def job(key: str, at_s: float, gpus: int, hours: float) -> Job:
        return Job(key, at_s, 1, gpus, hours, LOW_POOL, gpu_types=H100)

    arrives = HOUR_S + 120
    jobs = [job("E", 0, 8, 1.0), job("O", 1, 1, 100.0), job("S", HOUR_S + 60, 7, 100.0), job("W", arrives, 8, 0.5)]
    moving = StrataPolicy(fleet, catalog, None, defragment_after_s=round(HOUR_S))
    moved = {r.job.key: r for r in simulate(jobs, fleet, catalog, moving).records}

    assert moving.moves == 1
    assert moving.preemptions == {("O", "W"): 1}
    assert arrives + HOUR_S <= moved["W"].first_start_s <= arrives + HOUR_S + 300  # type: ignore[operator]
    assert moved["W"].capacity == "spot"
    assert (moved["O"].interruptions, moved["O"].capacity) == (1, "reserved")
    assert 0 < moved["O"].lost_gpu_h <= 0.5
    assert moved["S"].interruptions == 0
    waiting = {r.job.key: r for r in simulate(jobs, fleet, catalog, StrataPolicy(fleet, catalog, None)).records}
    assert waiting["W"].first_start_s == pytest.approx(1 + 100 * HOUR_S)


class PartialGangProbe:
    """Wraps a policy and records the most GPUs ever held by gangs only partly placed."""

    def __init__(self, inner: Policy) -> None:
        self.inner, self.name, self.most = inner, inner.name, 0

    def tick(self, now_s: float, state: SimState) -> bool:
        return self.inner.tick(now_s, state)

    def schedule(self, now_s: float, state: SimState) -> None:
        self.inner.schedule(now_s, state)
        partial = sum(sum(r.placed.values()) for r in state.runs.values() if r.workers < r.job.workers)
        self.most = max(self.most, partial)


def test_gangs_are_never_half_placed_by_strata_or_kueue_but_may_be_by_default() -> None:
    """X holds one node for 10 h; gang G (2 x 8 GPUs) arrives next. kube-scheduler without gangs binds one of
    G's pods to the free node, where it idles for 10 h; strata and kueue keep the whole gang queued."""
    catalog, fleet = a_catalog(), a_fleet("reserved", "reserved")
    jobs = [a_job("X", 0, 10.0), a_job("G", 0.01, 1.0, workers=2)]
    most = {}
    for name, policy in every_policy(fleet, catalog).items():
        probe = PartialGangProbe(policy)
        outcome = simulate(jobs, fleet, catalog, probe)
        assert starts(outcome)["G"] == pytest.approx(10.0)
        most[name] = probe.most
    assert most == {"default": 8, "kueue": 0, "karpenter": 8, "strata": 0}


def test_the_hold_back_keeps_reserved_gpus_for_forecast_high_priority_demand() -> None:
    """With the forecast's upper edge at 8 H100s, a low-priority job goes to spot and a second one waits instead
    of taking the reserved node; a high-priority job takes it (free reserved first), and the low one then goes to
    spot. Without a hold the second low job takes it."""
    catalog, fleet = a_catalog(), a_fleet("reserved", "spot")
    low1, low2, high = a_job("L1", 0, 1.0), a_job("L2", 0, 1.0), a_job("H", 0, 1.0, pool=HIGH_POOL)

    def run(policy: StrataPolicy, jobs: list[Job]) -> SimState:
        state = SimState(fleet, catalog, PowerClock(catalog))
        for job in jobs:
            state.queue[job.key] = job
            state.records[job.key] = JobRecord(job)
        policy.schedule(0.0, state)
        return state

    held = StrataPolicy(fleet, catalog, HoldBackSettings())
    held.upper = {"H100": 8.0}
    state = run(held, [low1, low2])
    assert set(state.runs) == {"L1"}
    assert state.runs["L1"].placed == {"b-spot": 8}
    held = StrataPolicy(fleet, catalog, HoldBackSettings())
    held.upper = {"H100": 8.0}
    both = run(held, [low1, high])
    assert both.runs["H"].placed == {"a-reserved": 8}, "H takes the free reserved node: sunk cost, and held for it"
    assert both.runs["L1"].placed == {"b-spot": 8}
    assert held.unplaced == 0, "admission and placement now agree on where H goes"
    assert set(run(StrataPolicy(fleet, catalog, None), [low1, low2]).runs) == {"L1", "L2"}


def test_the_hold_back_forecast_learns_high_priority_demand_during_a_replay() -> None:
    """A steady high-priority job on the reserved node: after the first refit the extender's forecaster holds
    that demand, so the policy's hold names H100."""
    catalog, fleet = a_catalog(), a_fleet("reserved", "spot")
    policy = StrataPolicy(fleet, catalog, HoldBackSettings(refit_every=1))
    simulate([a_job("H", 0, 3.0, pool=HIGH_POOL)], fleet, catalog, policy)
    assert policy.upper["H100"] > 0


def test_a_refit_on_the_same_series_shifted_is_skipped_and_holds_what_a_fresh_fit_gives() -> None:
    """A steady 8-GPU high-priority job and a 30-minute history: once the history is full, every refit sees seven
    samples of 8 H100s (and of 0 MI300X), the last series shifted by one tick, and is skipped; after every tick the
    hold is what the extender's forecaster fits from scratch on that tick's series."""
    catalog, fleet = a_catalog(), a_fleet("reserved", "spot")
    settings = HoldBackSettings(refit_every=1, history_s=1800.0)
    policy = StrataPolicy(fleet, catalog, settings)
    ticks = []

    class Checked:
        name = "checked"

        def schedule(self, now_s: float, state: SimState) -> None:
            policy.schedule(now_s, state)

        def tick(self, now_s: float, state: SimState) -> bool:
            changed = policy.tick(now_s, state)
            for gpu_type, samples in policy.history.items():
                times = np.array([t for t, _ in samples], dtype=np.int64) + int(EPOCH.timestamp())
                fresh = predict(times, np.array([v for _, v in samples]), settings.config, None)
                assert fresh is not None
                assert policy.upper[gpu_type.value] == fresh.upper, (now_s, gpu_type)
            ticks.append(now_s)
            return changed

    simulate([a_job("H", 0, 3.0, pool=HIGH_POOL)], fleet, catalog, Checked())
    # ticks at 0, 5, ..., 180 minutes; the last sees the job gone (its finish comes first at one instant)
    assert ticks == [300.0 * i for i in range(37)]
    # the history grows to seven samples over the ticks at 0-30 min (fitted); from 35 min each series is the
    # last one shifted: H100 skipped at 35-175 min (29 ticks) and fitted at 180 (a 0 at the end), MI300X skipped
    # at 35-180 (30)
    assert policy.refits_skipped == 29 + 30


def test_reclaims_are_seeded_and_the_same_for_every_policy() -> None:
    catalog, fleet = a_catalog(spot_hazard=2.0), a_fleet("spot")
    jobs = [a_job("A", 0, 3.0, checkpoint_s=900.0)]
    first = simulate(jobs, fleet, catalog, default_scheduler(), seed=7).records[0]
    again = simulate(jobs, fleet, catalog, KueuePolicy(pools(fleet)), seed=7).records[0]
    assert first.interruptions > 0
    assert (first.interruptions, first.lost_gpu_h, first.finish_s) == (
        again.interruptions,
        again.lost_gpu_h,
        again.finish_s,
    )
    assert first.lost_gpu_h < first.interruptions * 0.25 * 8 + 1e-9  # never more than one interval per reclaim


def alibaba_folder(tmp_path: Path, rows: list[str]) -> Path:
    folder = tmp_path / "alibaba_gpu_v2023"
    folder.mkdir()
    header = (
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time"
    )
    with gzip.open(folder / "openb_pod_list_default.dev.csv.gz", "wt") as handle:
        handle.write("\n".join([header, *rows]) + "\n")
    return folder


def test_the_alibaba_reader_maps_pods_to_jobs_and_names_a_bad_cell(tmp_path: Path) -> None:
    day = 86400
    folder = alibaba_folder(
        tmp_path,
        [
            f"p0,1000,1,2,1000,,LS,Running,{day * 115 + 60},{day * 115 + 3660},{day * 115 + 60}",
            f"p1,1000,1,0,0,,BE,Running,{day * 115},{day * 116},{day * 115}",
            f"p2,1000,1,1,500,,BE,Pending,{day * 115},{day * 116},",
            f"p3,1000,1,1,500,,BE,Running,{day * 100},{day * 115 + 7200},{day * 100}",
        ],
    )
    jobs, summary = read_alibaba(folder, days=1)
    assert [(j.key, j.arrival_s, j.gpus, j.work_h, j.pool) for j in jobs] == [
        ("p0", 60.0, 2, 1.0, HIGH_POOL),
        ("p3", 0.0, 1, 2.0, LOW_POOL),
    ]
    assert summary.skipped == {"no GPU (CPU pod)": 1, "never scheduled (no run time)": 1}
    (tmp_path / "bad").mkdir()
    bad = alibaba_folder(tmp_path / "bad", ["p0,1000,1,two,1000,,LS,Running,0,10,0"])
    with pytest.raises(SimInputError, match=r"openb_pod_list_default.dev.csv.gz: row 2, column num_gpu"):
        read_alibaba(bad, days=1)


def test_a_fleet_the_trace_cannot_fit_is_reported_not_truncated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text("pools:\n  - {name: h, gpu: H100, capacityType: reserved, nodes: 1}\n")
    assert len(load_fleet(fleet_file, scale=3).nodes) == 3
    code = main(["--trace", "synthetic:200", "--days", "1", "--fleet", str(fleet_file), "--no-progress"])
    assert code == 2
    assert "need more GPUs of one type than the fleet has (8 GPUs; raise --scale)" in capsys.readouterr().err


def test_the_helios_reader_turns_demand_rises_into_jobs_and_falls_into_finishes(tmp_path: Path) -> None:
    """Demand 0, 4, 12, 8, 8 GPUs a minute apart: A (4 GPUs) starts at 1 min, B (8) at 2 min; the fall to 8 at
    3 min ends B, the latest, and 4 of its GPUs go on as C; A and C run to the window's end (5 min)."""
    header = "time,running_gpu_num,pending_gpu_num"
    rows = [f"2020-05-01 00:0{m}:00,{d},0" for m, d in enumerate((0, 4, 12, 8, 8))]
    with gzip.open(tmp_path / "vcX_cluster_sequence_vc.dev.csv.gz", "wt") as handle:
        handle.write("\n".join([header, *rows]) + "\n")
    jobs, _ = read_helios(tmp_path, days=5 / 1440, high_vcs=("vcX",))
    assert [(j.key, j.arrival_s, j.gpus, round(j.work_h * 60, 6), j.pool) for j in jobs] == [
        ("vcX-1", 60.0, 4, 4.0, HIGH_POOL),
        ("vcX-2", 120.0, 8, 1.0, HIGH_POOL),
        ("vcX-3", 180.0, 4, 2.0, HIGH_POOL),
    ]
    with gzip.open(tmp_path / "vcY_cluster_sequence_vc.dev.csv.gz", "wt") as handle:
        handle.write(f"{header}\n2020-05-01 00:00:00,x,0\n")
    with pytest.raises(SimInputError, match=r"vcY_cluster_sequence_vc.dev.csv.gz: row 2, column running_gpu_num"):
        read_helios(tmp_path, days=1)


def a_row(policy: str, cost: float, jct_h: float, util: float, high: tuple[float, float], low_h: float) -> Figures:
    """Figures with the aims' inputs set (waits in hours: high as mean and p95, low as the mean)."""
    means, p95s = {HIGH_POOL: high[0], LOW_POOL: low_h}, {HIGH_POOL: high[1], LOW_POOL: 0.0}
    return Figures(policy, cost, 0.0, 0.0, util, means, p95s, jct_h, 0.0, 0, 0, 0.0)


def test_the_aims_are_ratios_of_one_seeds_policies_with_their_median_and_range_over_seeds() -> None:
    seed0 = [a_row("default", 200.0, 10.0, 0.8, (3.0, 6.0), 2.0), a_row("strata", 150.0, 9.0, 0.9, (1.0, 0.5), 1.0),
             a_row("strata-no-holdback", 140.0, 9.0, 0.9, (1.0, 2.0), 1.0)]  # fmt: skip
    seed1 = [a_row("default", 100.0, 10.0, 0.8, (2.0, 4.0), 4.0), a_row("strata", 90.0, 11.0, 0.7, (2.0, 1.0), 1.0)]
    ratios = [aim_ratios(0, seed0), aim_ratios(1, seed1)]
    assert ratios[0] == AimRatios(0, cost=0.75, jct=0.9, utilisation=0.9, wait_high=1 / 3, wait_low=0.5,
                                  wait_high_p95_holdback=0.25)  # fmt: skip
    assert (ratios[1].cost, ratios[1].wait_low) == (0.9, 0.25)
    assert ratios[1].wait_high_p95_holdback is None  # no strata-no-holdback in that run
    assert aim_ratios(0, seed0, "strata-no-holdback").cost == 0.7  # --aims-of: another policy's ratios

    lines = [line.split() for line in aims_table(ratios).splitlines()]
    assert lines[1] == ["0", "0.750", "0.900", "90.0%", "0.333", "0.500", "0.250"]
    assert lines[2] == ["1", "0.900", "1.100", "70.0%", "1.000", "0.250", "-"]
    assert lines[3] == ["median", "0.825", "1.000", "80.0%", "0.667", "0.375", "0.250"]
    assert lines[4] == [
        "range", "0.750-0.900", "0.900-1.100", "70.0%-90.0%", "0.333-1.000", "0.250-0.500", "0.250-0.250"
    ]  # fmt: skip


def test_several_seeds_print_a_row_per_policy_and_seed_and_the_aims_per_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text("pools:\n  - {name: h, gpu: H100, capacityType: spot, nodes: 4}\n")
    argv = ["--trace", "synthetic:40", "--days", "1", "--fleet", str(fleet_file), "--no-progress",
            "--policies", "default,strata", "--seed", "3", "--seeds", "2"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines() if line.split() and "@" in line.split()[0]]
    timed = ["default@3:", "strata@3:", "default@4:", "strata@4:"]
    assert rows == [*timed, *(name.rstrip(":") for name in timed)]
    aims = out[out.index("seed  cost / default") :].splitlines()
    assert [line.split()[0] for line in aims] == ["seed", "3", "4", "median", "range"]
