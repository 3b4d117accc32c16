"""Memory-leak detection: a leak is a trend, not a peak.

After a warm-up, the samples are reduced to at most `max_points` bucket medians
(robust to spikes, and bounding the O(n²) slope fit on day-long series), then:

- slope: Theil–Sen (median of pairwise slopes, with Sen's 95 % interval);
- significance: Mann–Kendall, i.e. Kendall's τ of value against time, one-sided
  for growth;
- persistence: the same test on each half of the window, and the second half
  must grow at least `min_half_ratio` as fast as the first. A leak keeps its
  pace all along; a cache that fills once is a step (a trend over the whole
  window, not in both halves), and warm-up growth slows down.

The verdict is `suspected` when all agree and the slope exceeds a floor.

The detector runs inside the server it watches, so its own memory must not
look like a leak: scipy's theilslopes builds n×n matrices, and the allocator
keeps the high-water mark of those temporaries as RSS, which grew with the
series for minutes. The pairwise slopes here go into one preallocated,
pre-touched workspace of max_points² / 2 floats, so the fit's footprint is the
same on every call.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

if TYPE_CHECKING:
    from server.memory import MemorySampler

_Z95 = float(stats.norm.ppf(0.975))
# Memory sources the server's own leak detector watches (and each GPU's used memory).
LEAK_SOURCES = ("rss_bytes", "torch_cuda_allocated_bytes", "torch_cuda_reserved_bytes")
_GPU_USED = re.compile(r"gpu\d+_memory_used_bytes$")


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
    min_slope_bytes_per_s: float = 2**20 / 3600.0
    """Trends slower than this (1 MiB/h, 24 MiB/day) are not reported: RSS of a
    long-lived process creeps by pages that small."""
    min_half_ratio: float = 0.5
    """The second half of the window must grow at least this fraction as fast as
    the first (a leak keeps its pace; warm-up growth slows down)."""
    max_points: int = 200
    """Samples are reduced to at most this many bucket medians before fitting."""


class _Workspace:
    """Room for the pairwise slopes of `points` points, allocated and touched once."""

    def __init__(self, points: int) -> None:
        self.points = points
        self.slopes = np.zeros(points * (points - 1) // 2)
        self.lock = threading.Lock()


_workspaces: dict[int, _Workspace] = {}
_workspaces_lock = threading.Lock()


def _workspace(points: int) -> _Workspace:
    with _workspaces_lock:
        ws = _workspaces.get(points)
        if ws is None:
            ws = _workspaces[points] = _Workspace(points)
        return ws


def theil_sen(t: np.ndarray, v: np.ndarray, ws: _Workspace) -> tuple[float, float, float]:
    """Slope and its 95 % interval (Sen 1968), as scipy.stats.theilslopes, in O(1) new memory."""
    n = len(t)
    if n < 2 or n > ws.points:
        raise ValueError(f"theil_sen needs 2..{ws.points} points, got {n}")
    with ws.lock:
        k = 0
        for i in range(n - 1):
            seg = ws.slopes[k : k + n - 1 - i]
            np.subtract(v[i + 1 :], v[i], out=seg)
            with np.errstate(divide="ignore", invalid="ignore"):
                np.divide(seg, t[i + 1 :] - t[i], out=seg)
            k += n - 1 - i
        pairs = ws.slopes[:k]
        pairs.sort()  # in place; equal times give ±inf or nan, which sort to the ends
        a = int(np.searchsorted(pairs, -np.inf, side="right"))
        b = int(np.searchsorted(pairs, np.inf, side="left"))
        finite = pairs[a:b]  # a view: no copy of the workspace
        m = len(finite)
        if m == 0:
            return math.nan, math.nan, math.nan
        slope = float(finite[m // 2]) if m % 2 else float(finite[m // 2 - 1] + finite[m // 2]) / 2.0
        sigma = math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
        hi = min(round((m + _Z95 * sigma) / 2.0), m - 1)
        lo = max(round((m - _Z95 * sigma) / 2.0) - 1, 0)
        return slope, float(finite[lo]), float(finite[hi])


def _reduce(t: np.ndarray, v: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    if len(t) <= max_points:
        return t, v
    edges = np.linspace(0, len(t), max_points + 1).astype(int)
    tt = np.array([np.median(t[a:b]) for a, b in itertools.pairwise(edges)])
    vv = np.array([np.median(v[a:b]) for a, b in itertools.pairwise(edges)])
    return tt, vv


def _growth_p(t: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """Kendall's τ and the one-sided p-value for an increasing trend."""
    if len(v) < 3 or np.ptp(v) == 0:
        return 0.0, 1.0
    res = stats.kendalltau(t, v)
    tau = float(res.statistic)
    if not math.isfinite(tau):
        return 0.0, 1.0
    p_two = float(res.pvalue)
    return tau, p_two / 2 if tau > 0 else 1 - p_two / 2


def _persistence(tr: np.ndarray, vr: np.ndarray, s: LeakSettings, ws: _Workspace) -> str:
    """Why the growth is not persistent, or "" when it is."""
    half = len(tr) // 2
    halves = {"first": (tr[:half], vr[:half]), "second": (tr[half:], vr[half:])}
    for name, (ht, hv) in halves.items():
        _, p = _growth_p(ht, hv)
        if p >= s.alpha:
            return (
                f"growth is not persistent: the {name} half of the window shows no significant "
                f"trend (p={p:.3g}); a one-off step such as a cache filling, not a leak"
            )
    first, _, _ = theil_sen(*halves["first"], ws)
    second, _, _ = theil_sen(*halves["second"], ws)
    if second < s.min_half_ratio * first or second < s.min_slope_bytes_per_s:
        return (
            f"growth is slowing down: {second:.3g} B/s in the second half of the window against "
            f"{first:.3g} B/s in the first; warm-up or a filling cache, not a leak"
        )
    return ""


def warm_up(settings: LeakSettings | None = None) -> None:
    """Run every path of the detector once on a synthetic leak, so that its
    one-off allocations (the workspace, scipy's first calls) happen now, at the
    watched process's start-up, and not as a step inside the window it judges."""
    s = settings or LeakSettings()
    n = 2 * max(s.max_points, s.min_samples)
    t = np.arange(n, dtype=float)
    v = 1e8 + 1e4 * t + np.where(t % 2 == 0, 1.0, -1.0)
    detect_leak(t, v, "warm-up", LeakSettings(warmup_s=0, max_points=s.max_points))


def detect_leak(
    times: np.ndarray, values: np.ndarray, source: str = "memory", settings: LeakSettings | None = None
) -> LeakVerdict:
    """Judge whether `values` (bytes, sampled at `times` in seconds) leak."""
    s = settings or LeakSettings()
    ws = _workspace(max(2, s.max_points))  # before any early return: the footprint is there from the start
    t = np.asarray(times, dtype=float)
    v = np.asarray(values, dtype=float)
    keep = np.isfinite(t) & np.isfinite(v)
    t, v = t[keep], v[keep]
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    if len(t):
        after = t >= t[0] + s.warmup_s
        t, v = t[after], v[after]
    nan = float("nan")
    if len(t) < max(s.min_samples, 4):
        return LeakVerdict(
            source,
            False,
            nan,
            nan,
            nan,
            nan,
            nan,
            len(t),
            float(t[-1] - t[0]) if len(t) else 0.0,
            f"not enough samples after warm-up ({len(t)} < {s.min_samples})",
        )
    window = float(t[-1] - t[0])
    tr, vr = _reduce(t - t[0], v, ws.points)
    slope, low, high = theil_sen(tr, vr, ws)
    tau, p = _growth_p(tr, vr)
    verdict = LeakVerdict(source, False, slope, low, high, tau, p, len(t), window, "")
    if p >= s.alpha:
        verdict.reason = f"no significant growth (Mann-Kendall p={p:.3g} >= {s.alpha})"
        return verdict
    if not slope >= s.min_slope_bytes_per_s:
        verdict.reason = f"growth of {slope:.3g} B/s is below the floor of {s.min_slope_bytes_per_s:.3g} B/s"
        return verdict
    why_not = _persistence(tr, vr, s, ws)
    if why_not:
        verdict.reason = why_not
        return verdict
    verdict.suspected = True
    verdict.reason = (
        f"memory grows {slope * 3600 / 2**20:.2f} MiB/h throughout the window "
        f"(Kendall tau={tau:.2f}, p={p:.2g})"
    )
    return verdict


class LeakCache:
    """Leak verdicts per memory source, recomputed at most every `ttl_s`."""

    def __init__(self, sampler: MemorySampler, warmup_s: float, ttl_s: float = 5.0) -> None:
        self.sampler = sampler
        self.settings = LeakSettings(warmup_s=warmup_s)
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._at = 0.0
        self._verdicts: dict[str, LeakVerdict] = {}
        # The detector runs in the process it watches: make its one-off
        # allocations now rather than as a step at the start of its window.
        warm_up(self.settings)

    def verdicts(self) -> dict[str, LeakVerdict]:
        with self._lock:
            if time.monotonic() - self._at > self.ttl_s:
                self._verdicts = self._compute()
                self._at = time.monotonic()
            return dict(self._verdicts)

    def _compute(self) -> dict[str, LeakVerdict]:
        sampler = self.sampler
        sources = [s for s in sampler.sources() if s in LEAK_SOURCES or _GPU_USED.match(s)]
        out = {}
        for src in sources:
            t, v = sampler.series(src)
            out[src] = detect_leak(t, v, src, self.settings)
        return out
