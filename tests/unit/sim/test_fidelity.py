"""The fidelity comparison on decision lists small enough to check by hand: shares of same GPU and capacity type,
Spearman's rho of the admitted order with ties, wait differences, and the disagreeing kinds."""

from __future__ import annotations

import pytest

from strata_sim.fidelity import Decision, compare, percentile, ranks, same_kinds_by_group, spearman, table

pytestmark = pytest.mark.timeout(30)


def a_decision(key: str, start_min: float | None, kind: str = "H100/reserved", arrival_min: float = 0.0) -> Decision:
    gpu_type, capacity = kind.split("/")
    start = None if start_min is None else start_min * 60
    return Decision(key, arrival_min * 60, start, gpu_type, capacity)


def test_identical_sides_agree_fully() -> None:
    side = [a_decision("a", 0), a_decision("b", 5, "MI300X/spot", 1), a_decision("c", 9, "H100/on-demand", 9)]
    agreement = compare(side, side)
    assert (agreement.same_gpu_type, agreement.same_capacity, agreement.same_both) == (3, 3, 3)
    assert agreement.order_correlation == pytest.approx(1.0)
    assert agreement.wait_diff_s == (0.0, 0.0, 0.0)
    assert agreement.disagreements == {}


def test_gpu_type_and_capacity_type_agree_separately() -> None:
    sim = [a_decision("a", 0), a_decision("b", 1), a_decision("c", 2), a_decision("d", 3)]
    real = [
        a_decision("a", 0),
        a_decision("b", 1, "H100/spot"),  # same GPU type, other capacity type
        a_decision("c", 2, "MI300X/reserved"),  # other GPU type, same capacity type
        a_decision("d", 3, "MI300X/spot"),  # both differ
    ]
    agreement = compare(sim, real)
    assert agreement.started_both == 4
    assert agreement.same_gpu_type == 2
    assert agreement.same_capacity == 2
    assert agreement.same_both == 1
    assert agreement.share(agreement.same_both) == 0.25
    assert agreement.disagreements == {
        ("H100/reserved", "H100/spot"): 1,
        ("H100/reserved", "MI300X/reserved"): 1,
        ("H100/reserved", "MI300X/spot"): 1,
    }


def test_waits_are_compared_from_each_sides_own_arrival() -> None:
    # the real job was created 1 minute late and admitted 4 minutes after that: it waited 4, the simulated one 0
    sim = [a_decision("a", 10, arrival_min=10), a_decision("b", 30, arrival_min=20)]
    real = [a_decision("a", 15, arrival_min=11), a_decision("b", 31, arrival_min=21)]
    agreement = compare(sim, real)
    assert agreement.wait_diff_s == (240.0, 0.0)


def test_a_job_started_on_one_side_only_counts_there_and_not_in_the_shares() -> None:
    sim = [a_decision("a", 0), a_decision("b", 5), a_decision("c", None)]
    real = [a_decision("a", 0), a_decision("b", None), a_decision("c", 7, "H100/spot")]
    agreement = compare(sim, real)
    assert agreement.started_both == 1
    assert agreement.only_simulated == ("b",)
    assert agreement.only_real == ("c",)
    assert agreement.kinds[("H100/reserved", "not started")] == 1
    assert agreement.kinds[("not started", "H100/spot")] == 1
    assert agreement.order_correlation is None  # one job started on both sides: no order to compare


def test_admitted_order_is_spearmans_rho_with_ties_at_their_average_rank() -> None:
    # the simulation starts a, b and c at one instant (tied); the real control plane starts them one after another
    sim = [a_decision("a", 0), a_decision("b", 0), a_decision("c", 0), a_decision("d", 10)]
    real = [a_decision("a", 1), a_decision("b", 2), a_decision("c", 3), a_decision("d", 11)]
    # sim ranks 2, 2, 2, 4 and real 1, 2, 3, 4, both of mean 2.5: rho = sum of products of deviations (3) over
    # the root of the sums of squares (3 and 5)
    assert compare(sim, real).order_correlation == pytest.approx(3 / (3 * 5) ** 0.5)
    reversed_real = [a_decision(k, 10 - i) for i, k in enumerate("abcd")]
    assert compare(real, reversed_real).order_correlation == pytest.approx(-1.0)


def test_ranks_share_ties_and_spearman_is_undefined_without_order() -> None:
    assert ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
    assert spearman([1.0], [1.0]) is None
    with pytest.raises(ValueError, match="3 values against 2"):
        spearman([1.0, 2.0, 3.0], [1.0, 2.0])


def test_sides_with_different_jobs_are_refused_naming_the_job() -> None:
    with pytest.raises(ValueError, match="job b has no real decision"):
        compare([a_decision("a", 0), a_decision("b", 0)], [a_decision("a", 0)])
    with pytest.raises(ValueError, match="job a has two simulated decisions"):
        compare([a_decision("a", 0), a_decision("a", 1)], [a_decision("a", 0)])


def test_jobs_of_one_pass_that_swapped_kinds_agree_by_group_but_not_one_by_one() -> None:
    # one pass gave a and b one reserved and one spot GPU on both sides, to the other job; c got other capacity
    sim = [a_decision("a", 0), a_decision("b", 0, "H100/spot"), a_decision("c", 5), a_decision("d", None)]
    real = [a_decision("a", 0, "H100/spot"), a_decision("b", 0), a_decision("c", 5, "MI300X/reserved")]
    real.append(a_decision("d", None))
    assert compare(sim, real).same_both == 0
    assert same_kinds_by_group(sim, real, {"a": "pass1", "b": "pass1", "c": "pass2"}) == 2
    assert same_kinds_by_group(sim, real, {}) == 0  # every job its own group: one by one


def test_percentile_interpolates_between_order_statistics() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == pytest.approx(4.8)
    assert percentile([], 0.5) == 0.0


def test_the_table_names_the_shares_the_order_and_each_disagreement() -> None:
    sim = [a_decision("a", 0), a_decision("b", 1), a_decision("c", 2)]
    real = [a_decision("a", 0), a_decision("b", 3, "MI300X/reserved"), a_decision("c", 4)]
    text = table(compare(sim, real))
    assert "same GPU type and capacity type    2 (66.7%)" in text
    assert "admitted order, Spearman rho       1.000" in text
    assert "mean 1.3, median 2.0, p95 2.0, largest 2.0" in text
    assert text.splitlines()[-1].split() == ["H100/reserved", "MI300X/reserved", "1"]
