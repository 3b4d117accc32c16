"""Order-statistic confidence intervals and the minimum sample counts
(loadtest.stats): exact against brute-force binomial sums, the MLPerf LoadGen
early-stopping figures derived (not looked up), coverage of a known
distribution's percentile at about the stated rate, and reading ranks and
counts from an HDR histogram."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadtest.recorder import new_hist
from loadtest.stats import (
    bounded,
    count_at_or_below,
    min_samples,
    percentile_interval,
    rank_interval,
    value_at_rank,
)


def _cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed term by term."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(0, k + 1)) if k >= 0 else 0.0


def test_min_samples_matches_mlperf_early_stopping() -> None:
    # LoadGen's figures for one over-latency query allowed at 99 % confidence.
    assert min_samples(0.99, 0.99) == 662
    assert min_samples(0.90, 0.99) == 64
    for q, c in ((0.99, 0.99), (0.9, 0.99), (0.5, 0.95), (0.999, 0.99)):
        n = min_samples(q, c)
        assert bounded(n, q, c) and not bounded(n - 1, q, c)
        # The definition itself: with n samples, two or more above the quantile is that likely.
        assert _cdf(1, n, 1 - q) <= 1 - c < _cdf(1, n - 1, 1 - q)


@pytest.mark.parametrize(
    ("n", "q", "c"), [(50, 0.5, 0.95), (200, 0.9, 0.99), (700, 0.99, 0.99), (30, 0.95, 0.9)]
)
def test_rank_interval_is_the_tightest_equal_tailed_one(n: int, q: float, c: float) -> None:
    r = rank_interval(n, q, c)
    alpha = (1 - c) / 2
    # low: P(K <= low - 1) <= alpha, and one rank higher would break it.
    if r.low >= 1:
        assert _cdf(r.low - 1, n, q) <= alpha + 1e-12 < _cdf(r.low, n, q)
    # high: P(K >= high) <= alpha, and one rank lower would break it.
    if r.high <= n:
        assert 1 - _cdf(r.high - 1, n, q) <= alpha + 1e-12 < 1 - _cdf(r.high - 2, n, q)
    coverage = _cdf(r.high - 1, n, q) - _cdf(r.low - 1, n, q)
    assert coverage >= c - 1e-9


def test_interval_covers_the_true_percentile_at_the_stated_rate() -> None:
    """Exponential latencies (mean 10 ms): the true p99 is 10 ln 100 ms. Of 2,000
    independent runs of 1,000 samples, the 95 % interval must cover it in about
    95 % of them (order-statistic intervals are exact up to rank discreteness,
    which only adds coverage), and neither side may miss much more than 2.5 %."""
    rng = np.random.default_rng(11)
    true_p99_us = 10_000 * math.log(100)
    trials, n, c = 2000, 1000, 0.95
    r = rank_interval(n, 0.99, c)
    samples = np.sort(rng.exponential(10_000, size=(trials, n)), axis=1)
    low, high = samples[:, r.low - 1], samples[:, r.high - 1]
    covered = float(np.mean((low <= true_p99_us) & (true_p99_us <= high)))
    above, below = float(np.mean(low > true_p99_us)), float(np.mean(high < true_p99_us))
    assert 0.935 <= covered <= 0.975, covered
    assert above < 0.04 and below < 0.04, (above, below)
    # The same through the HDR histogram the recorder uses, for a handful of runs.
    hits = 0
    for row in samples[:200]:
        h = new_hist()
        for v in row:
            h.record_value(int(v))
        iv = percentile_interval(h, 0.99, c)
        assert iv.enough and iv.n == n
        assert iv.low is not None and iv.high is not None
        hits += iv.low <= true_p99_us * 1.001 and true_p99_us <= iv.high * 1.001
    assert hits / 200 >= 0.9, hits


def test_too_few_samples_are_not_enough() -> None:
    h = new_hist()
    for v in range(1, 301):
        h.record_value(v)
    iv = percentile_interval(h, 0.99, 0.99)
    assert (iv.n, iv.needed, iv.enough) == (300, 662, False)
    assert iv.high is None  # the upper end of the interval lies beyond the sample
    ok = percentile_interval(h, 0.9, 0.99)
    assert ok.enough and ok.low is not None and ok.high is not None
    assert ok.low < 270 < ok.high


def test_ranks_and_counts_from_the_histogram() -> None:
    h = new_hist()
    for v in range(1, 1001):
        h.record_value(v)
    assert [value_at_rank(h, r) for r in (1, 2, 500, 999, 1000)] == [1, 2, 500, 999, 1000]
    assert count_at_or_below(h, 100) == 100
    assert count_at_or_below(h, 0.5) == 0
    assert count_at_or_below(h, 10_000) == 1000
    empty = percentile_interval(new_hist(), 0.5, 0.95)
    assert empty.n == 0 and not empty.enough


def test_bad_quantile_is_refused() -> None:
    with pytest.raises(ValueError, match="quantile and confidence"):
        min_samples(1.0, 0.99)
