"""The blend's search over mixes: the in-place, blocked evaluation picks the mix a plain sMAPE over each mix picks,
with the same errors, and the blocked product is the plain product, number for number."""

from __future__ import annotations

import numpy as np

from strata_scheduler.forecasting import _best_blend, _mix_forecasts, _mixes, naive_candidates


def test_two_candidates_either_side_of_demand_blend_half_and_half_exactly() -> None:
    """Candidates 2 below and 2 above every target: the half-and-half mix forecasts each exactly (sMAPE 0), and
    every other mix misses by 0.4 x 2 or more somewhere, so the search must find (0.5, 0.5) and zero errors."""
    y = np.array([10.0, 12, 14, 9, 11, 13, 8, 10, 12, 15])
    h = 1
    below = np.concatenate([y[h:] - 2, [np.nan]])  # below[i] forecasts y[i + h]
    above = np.concatenate([y[h:] + 2, [np.nan]])
    weights, errors = _best_blend({"below": below, "above": above}, y, h, start=0)
    assert weights == {"below": 0.5, "above": 0.5}
    assert np.array_equal(errors, np.zeros(len(y) - h))


def test_the_chosen_mix_is_the_one_with_the_lowest_recency_weighted_smape_over_every_mix() -> None:
    rng = np.random.default_rng(7)
    y = np.round(rng.gamma(2.0, 8.0, 700)) * (rng.random(700) > 0.2)  # zeros: 0/0 terms count 0
    y[rng.random(700) < 0.05] = np.nan  # gaps: origins left out
    candidates = naive_candidates(y, 3, 3, 288)
    start, half_life = 700 - 400, 288
    weights, errors = _best_blend(candidates, y, 3, start, half_life)

    names = list(candidates)
    targets = y[start + 3 :]
    origins = np.stack([candidates[n][start : len(y) - 3] for n in names], axis=1)
    observed = ~np.isnan(targets) & ~np.isnan(origins).any(axis=1)
    age = len(targets) - 1 - np.flatnonzero(observed)
    recency = 0.5 ** (age / half_life)
    scores = []
    for mix in _mixes(len(names)):  # one mix at a time, the textbook formula
        forecast = origins[observed] @ mix
        actual = targets[observed]
        scale = np.abs(actual) + np.abs(forecast)
        terms = np.where(scale > 0, np.abs(actual - forecast) / np.where(scale > 0, scale, 1), 0)
        scores.append(float((terms * recency).sum() / recency.sum()))
    best = int(np.flatnonzero(np.array(scores) <= min(scores) + 1e-12)[0])
    assert weights == {n: float(w) for n, w in zip(names, _mixes(len(names))[best], strict=True) if w}
    assert np.allclose(errors, targets - origins @ _mixes(len(names))[best], equal_nan=True)


def test_mixes_are_every_split_of_ten_tenths_and_read_only() -> None:
    two = _mixes(2)
    assert two.tolist() == [[w / 10, (10 - w) / 10] for w in range(10, -1, -1)]
    five = _mixes(5)
    assert five.shape == (1001, 5)  # C(14, 4) ways to split 10 tenths over 5 candidates
    assert np.allclose(five.sum(axis=1), 1.0)
    assert not five.flags.writeable
    assert _mixes(5) is five


def test_the_blocked_product_is_the_plain_product_number_for_number() -> None:
    """Blocks of 13 rows (5 candidates) and 3 (6 candidates), every length of last block, one of one row included
    (which BLAS would round as a matrix-vector product)."""
    rng = np.random.default_rng(3)
    for candidates in (5, 6):
        mixes = _mixes(candidates)
        for length in (*range(1, 30), 576, 577):
            origins = rng.gamma(2.0, 10.0, (length, candidates))
            assert np.array_equal(_mix_forecasts(origins, mixes), origins @ mixes.T), (candidates, length)
