"""Memory-leak detection: a leak is a trend, not a peak.

After a warm-up, the samples are reduced to at most `max_points` bucket medians
(robust to spikes, and bounding the O(n²) slope fit on day-long series), then:

- slope: Theil–Sen (median of pairwise slopes, with its 95 % interval);
- significance: Mann–Kendall, i.e. Kendall's τ of value against time, one-sided
  for growth;
- persistence: the same test on each half of the window. A leak grows all along;
  a cache that fills once is a step, which shows as a trend over the whole window
  but not in both halves, so it is not called a leak.

The verdict is `suspected` when all three agree and the slope exceeds a floor.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats


@dataclass
class LeakVerdict:
    source: str
    suspected: bool
    slope_bytes_per_s: float
    slope_low_bytes_per_s: float
    slope_high_bytes_per_s: float
    tau: float
    p_value: float
    samples: int
    window_s: float
    reason: str

    @property
    def slope_bytes_per_hour(self) -> float:
        return self.slope_bytes_per_s * 3600.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["slope_bytes_per_hour"] = self.slope_bytes_per_hour
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


@dataclass
class LeakSettings:
    warmup_s: float = 60.0
    """Samples in the first seconds of the series are ignored (allocators and
    caches fill up then)."""
    alpha: float = 0.01
    """Significance level of the trend tests."""
    min_samples: int = 20
    """Fewer samples after warm-up give no verdict."""
    min_slope_bytes_per_s: float = 1024.0 / 60.0
    """Trends slower than this (1 KiB/min, about 1.4 MiB/day) are not reported."""
    max_points: int = 400
    """Samples are reduced to at most this many bucket medians before fitting."""


def _reduce(t: np.ndarray, v: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    if len(t) <= max_points:
        return t, v
    edges = np.linspace(0, len(t), max_points + 1).astype(int)
    tt = np.array([np.median(t[a:b]) for a, b in itertools.pairwise(edges)])
    vv = np.array([np.median(v[a:b]) for a, b in itertools.pairwise(edges)])
    return tt, vv


def _growth_p(t: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """Kendall's τ and the one-sided p-value for an increasing trend."""
    if np.ptp(v) == 0:
        return 0.0, 1.0
    res = stats.kendalltau(t, v)
    tau = float(res.statistic)
    if not math.isfinite(tau):
        return 0.0, 1.0
    p_two = float(res.pvalue)
    return tau, p_two / 2 if tau > 0 else 1 - p_two / 2


def detect_leak(
    times: np.ndarray, values: np.ndarray, source: str = "memory", settings: LeakSettings | None = None
) -> LeakVerdict:
    """Judge whether `values` (bytes, sampled at `times` in seconds) leak."""
    s = settings or LeakSettings()
    t = np.asarray(times, dtype=float)
    v = np.asarray(values, dtype=float)
    keep = np.isfinite(t) & np.isfinite(v)
    t, v = t[keep], v[keep]
    if len(t):
        after = t >= t[0] + s.warmup_s
        t, v = t[after], v[after]
    nan = float("nan")
    if len(t) < s.min_samples:
        return LeakVerdict(source, False, nan, nan, nan, nan, nan, len(t),
                           float(t[-1] - t[0]) if len(t) else 0.0,
                           f"not enough samples after warm-up ({len(t)} < {s.min_samples})")  # fmt: skip
    window = float(t[-1] - t[0])
    tr, vr = _reduce(t - t[0], v, s.max_points)
    fit = stats.theilslopes(vr, tr, alpha=0.95)
    slope, low, high = float(fit.slope), float(fit.low_slope), float(fit.high_slope)
    tau, p = _growth_p(tr, vr)
    verdict = LeakVerdict(source, False, slope, low, high, tau, p, len(t), window, "")
    if p >= s.alpha:
        verdict.reason = f"no significant growth (Mann-Kendall p={p:.3g} >= {s.alpha})"
        return verdict
    if slope < s.min_slope_bytes_per_s:
        verdict.reason = (f"growth of {slope:.3g} B/s is below the floor of "
                          f"{s.min_slope_bytes_per_s:.3g} B/s")  # fmt: skip
        return verdict
    half = len(tr) // 2
    for name, (a, b) in (("first", (0, half)), ("second", (half, len(tr)))):
        _, seg_p = _growth_p(tr[a:b], vr[a:b])
        if seg_p >= s.alpha:
            verdict.reason = (
                f"growth is not persistent: the {name} half of the window shows no significant "
                f"trend (p={seg_p:.3g}); a one-off step such as a cache filling, not a leak"
            )
            return verdict
    verdict.suspected = True
    verdict.reason = (f"memory grows {slope * 3600 / 2**20:.2f} MiB/h throughout the window "
                      f"(Kendall tau={tau:.2f}, p={p:.2g})")  # fmt: skip
    return verdict
