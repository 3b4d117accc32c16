"""Confidence on percentiles, from order statistics alone (no assumption about
the latency distribution), and goodput.

With n samples, the number K of them below the true q-quantile ξ is
Binomial(n, q) whatever the distribution. So the k-th smallest sample X_(k)
satisfies X_(l) <= ξ < X_(u) exactly when l <= K <= u - 1, and an interval of
ranks [l, u] with P(l <= K <= u - 1) >= c is a confidence-c interval for ξ.

A percentile is *bounded* when the one-sided upper confidence bound at c is a
sample below the maximum: the smallest rank u with P(K >= u) <= 1 - c is at
most n - 1. The maximum alone is one sample, an outlier; a bound resting on it
says nothing. P(K >= n - 1) = P(Binomial(n, 1 - q) <= 1), and the smallest n
for which that is <= 1 - c is the minimum sample count. This is the rule MLPerf
LoadGen's early stopping applies with one over-latency query allowed: p99 at
99 % confidence needs 662 samples, p90 needs 64 (`min_samples`, derived, and
checked against those figures in the tests).

Ranks are read from the merged HDR histogram (the value at a rank is the
histogram's value at the percentile that rank is of the count), so the bounds
carry the histogram's 0.1 % resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from hdrh.histogram import HdrHistogram
from scipy import stats

CONFIDENCE = 0.99


@dataclass(frozen=True)
class RankInterval:
    """1-based ranks; `low` 0 means unbounded below, `high` n + 1 unbounded above."""

    n: int
    low: int
    high: int


def rank_interval(n: int, q: float, confidence: float) -> RankInterval:
    """The equal-tailed two-sided interval of ranks for the q-quantile (0 < q < 1)."""
    alpha = (1.0 - confidence) / 2.0
    # low: the largest l with P(K <= l - 1) <= alpha.
    low = int(stats.binom.ppf(alpha, n, q))  # smallest k with P(K <= k) >= alpha
    if stats.binom.cdf(low, n, q) <= alpha:
        low += 1
    # P(K <= low - 1) <= alpha for this low (0: even rank 1 is not a lower bound)
    # high: the smallest u with P(K >= u) <= alpha, i.e. P(K <= u - 1) >= 1 - alpha.
    high = int(stats.binom.ppf(1.0 - alpha, n, q)) + 1
    return RankInterval(n, max(low, 0), min(high, n + 1))


def bounded(n: int, q: float, confidence: float) -> bool:
    """The one-sided upper bound lies below the sample maximum (module docstring)."""
    return n >= 2 and stats.binom.cdf(1, n, 1.0 - q) <= 1.0 - confidence


@lru_cache(maxsize=256)
def min_samples(q: float, confidence: float) -> int:
    """The fewest samples for which the q-quantile is bounded at `confidence`."""
    if not (0.0 < q < 1.0 and 0.0 < confidence < 1.0):
        raise ValueError(f"quantile and confidence must lie in (0, 1), got {q} and {confidence}")
    # Zero over-bound samples would need log(1 - c) / log(q); one more allowed needs more.
    hi = max(2, math.ceil(math.log(1.0 - confidence) / math.log(q)))
    while not bounded(hi, q, confidence):
        hi *= 2
    lo = 2
    while lo < hi:
        mid = (lo + hi) // 2
        if bounded(mid, q, confidence):
            hi = mid
        else:
            lo = mid + 1
    return lo


def value_at_rank(hist: HdrHistogram, rank: int) -> float:
    """The rank-th smallest recorded value (1-based), in the histogram's unit."""
    n = hist.get_total_count()
    rank = min(max(rank, 1), n)
    # get_value_at_percentile rounds percentile * n / 100 to the nearest count:
    # aiming a quarter below the rank lands on it despite floating-point error.
    return float(hist.get_value_at_percentile(100.0 * (rank - 0.25) / n))


@dataclass(frozen=True)
class Interval:
    n: int
    needed: int
    low: float | None  # None: unbounded below at this confidence
    high: float | None  # None: unbounded above

    @property
    def enough(self) -> bool:
        return self.n >= self.needed


def percentile_interval(hist: HdrHistogram, q: float, confidence: float, scale: float = 1.0) -> Interval:
    """The confidence interval of the q-quantile of what `hist` holds, values divided by `scale`."""
    n = hist.get_total_count()
    needed = min_samples(q, confidence)
    if n == 0:
        return Interval(0, needed, None, None)
    r = rank_interval(n, q, confidence)
    low = value_at_rank(hist, r.low) / scale if r.low >= 1 else None
    high = value_at_rank(hist, r.high) / scale if r.high <= n else None
    return Interval(n, needed, low, high)


def count_at_or_below(hist: HdrHistogram, value: float) -> int:
    """How many recorded values are <= value (bucket-exact: a bucket counts when
    its lowest equivalent value is <= value)."""
    total = 0
    for item in hist.get_recorded_iterator():
        if hist.get_lowest_equivalent_value(item.value_iterated_to) > value:
            break
        total += item.count_at_value_iterated_to
    return total
