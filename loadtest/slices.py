"""Time slices and latency drift.

The master folds every time-series interval's histogram into the current
slice (--slice-s, default 10 s; a phase change also closes it), so each slice
has its own throughput and percentiles while only one histogram is open at a
time: a day-long soak keeps 8,640 small records, not 8,640 histograms.

A soak's latency drift is the trend of its slices' p99 over time, judged by
the memory-leak detector's own test (server.leak: Theil–Sen slope, one-sided
Mann–Kendall, and persistence in both halves), imported rather than repeated.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from hdrh.histogram import HdrHistogram

from loadtest.plan import Plan
from loadtest.recorder import drop, new_hist
from loadtest.results import Check, Drift, Slice
from loadtest.stats import CONFIDENCE, min_samples
from server.leak import LeakSettings, detect_leak


class Slicer:
    """Closed slices, and the one histogram of the slice still open."""

    def __init__(self, slice_s: float, started: float, confidence: float = CONFIDENCE) -> None:
        self.slice_s = slice_s
        self.started = started
        self.confidence = confidence
        self.slices: list[Slice] = []
        self.hist = new_hist()
        self.t_start = started
        self.phase = ""
        self.last_add = started
        self.on_close: Callable[[Slice], None] | None = None  # --stable's windows

    def add(self, window: HdrHistogram, now: float, phase: str) -> None:
        """The interval ending at `now` (its histogram) of `phase`."""
        if phase != self.phase and self.hist.get_total_count():
            self.close(now)
        self.phase = phase
        self.last_add = now
        self.hist.add(window)
        if now - self.t_start >= self.slice_s:
            self.close(now)

    def close(self, now: float, phase: str | None = None) -> None:
        h = self.hist
        n = int(h.get_total_count())
        span = now - self.t_start
        if n:
            p50, p90, p99 = (h.get_value_at_percentile(q) / 1000.0 for q in (50.0, 90.0, 99.0))
            self.slices.append(
                Slice(
                    phase=self.phase if phase is None else phase,
                    t_start=round(self.t_start - self.started, 3),
                    t_end=round(now - self.started, 3),
                    requests=n,
                    rps=n / span if span > 0 else None,
                    p50_ms=p50,
                    p90_ms=p90,
                    p99_ms=p99,
                    p99_enough=n >= min_samples(0.99, self.confidence),
                )
            )
            if self.on_close is not None:
                self.on_close(self.slices[-1])
        drop(h)
        self.hist = new_hist()
        self.t_start = now

    def finish(self, now: float) -> list[Slice]:
        """Close the last slice. What arrived after the last time-series point is
        what was answered or cut off when the run stopped: a slice of its own
        ("stop", no duration), out of any phase's trend."""
        if self.hist.get_total_count():
            end = max(now, self.last_add)
            if end - self.t_start < 0.01 * self.slice_s:
                self.close(self.t_start, "stop")
            else:
                self.close(end)
        return self.slices


def drift(plan: Plan, slices: list[Slice], kind_of: dict[str, str]) -> Drift | None:
    """The p99 trend over the soak's slices (None: no soak phase ran)."""
    soak = [s for s in slices if kind_of.get(s.phase) == "soak"]
    if not any(kind == "soak" for kind in kind_of.values()):
        return None
    p = plan["soak"]
    settings = LeakSettings(
        warmup_s=float(p["drift_warmup_s"]),
        alpha=float(p["leak_alpha"]),
        min_samples=int(p["drift_min_slices"]),
        min_slope_bytes_per_s=float(p["max_p99_drift_ms_per_hour"]) / 3600.0,
    )
    t = np.array([(s.t_start + s.t_end) / 2 for s in soak])
    v = np.array([s.p99_ms for s in soak])
    verdict = detect_leak(t, v, "p99 of the slices", settings)
    slope = verdict.slope_bytes_per_s
    reason = verdict.reason.replace("memory grows", "p99 grows")
    if verdict.suspected:
        reason = f"p99 grows {slope * 3600:.1f} ms/h throughout the soak (Kendall tau={verdict.tau:.2f}, p={verdict.p_value:.2g})"
    finite = bool(np.isfinite(slope))
    return Drift(
        suspected=verdict.suspected,
        slope_ms_per_hour=slope * 3600 if finite else None,
        slope_low_ms_per_hour=verdict.slope_low_bytes_per_s * 3600 if finite else None,
        slope_high_ms_per_hour=verdict.slope_high_bytes_per_s * 3600 if finite else None,
        p_value=verdict.p_value if np.isfinite(verdict.p_value) else None,
        slices=len(soak),
        reason=reason.replace(" B/s", " ms/s"),
    )


def drift_checks(d: Drift | None) -> list[Check]:
    if d is None:
        return []
    actual = "n/a" if d.slope_ms_per_hour is None else f"{d.slope_ms_per_hour:+.1f} ms/h"
    return [
        Check(
            "latency drift",
            f"trend of p99 over {d.slices} slices (Theil-Sen, Mann-Kendall)",
            "no significant growth",
            actual,
            not d.suspected,
            d.reason,
        )
    ]


def slice_lines(slices: list[Slice], drift_result: Drift | None, most: int = 60) -> list[str]:
    """The report's time-slice table (the first and last slices of a long run) and drift line."""
    if not slices:
        return []
    rows = [
        "| Phase | From s | To s | Requests | Req/s | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    shown = slices if len(slices) <= most else [*slices[: most // 2], None, *slices[-most // 2 :]]
    for s in shown:
        if s is None:
            rows.append(f"| … {len(slices) - most} slices … | | | | | | | |")
            continue
        p99 = f"{s.p99_ms:.2f}" if s.p99_enough else f"{s.p99_ms:.2f} (too few samples)"
        rps = "—" if s.rps is None else f"{s.rps:.1f}"
        rows.append(
            f"| {s.phase} | {s.t_start:.0f} | {s.t_end:.0f} | {s.requests} | {rps} | "
            f"{s.p50_ms:.2f} | {s.p90_ms:.2f} | {p99} |"
        )
    if drift_result is not None:
        d = drift_result
        trend = "n/a" if d.slope_ms_per_hour is None else f"{d.slope_ms_per_hour:+.1f} ms/h"
        verdict = "DRIFT" if d.suspected else "no significant drift"
        rows += ["", f"Latency drift over the soak: {verdict}, p99 trend {trend} ({d.reason})"]
    return rows


def slice_chart_lines(
    slices: list[Slice], drift_result: Drift | None
) -> tuple[list[float], dict[str, list[float | None]]]:
    """x (slice mid-points) and the lines of the slices chart: p50, p99 and, for a
    soak with a fitted slope, the Theil–Sen trend through the soak's slices."""
    x = [(s.t_start + s.t_end) / 2 for s in slices]
    lines: dict[str, list[float | None]] = {
        "p50": [s.p50_ms for s in slices],
        "p99": [s.p99_ms for s in slices],
    }
    slope = drift_result.slope_ms_per_hour if drift_result is not None else None
    soak = [i for i, s in enumerate(slices) if s.phase == "soak"]
    if slope is not None and soak:
        per_s = slope / 3600.0
        intercept = float(np.median([slices[i].p99_ms - per_s * x[i] for i in soak]))
        lines["p99 trend (Theil-Sen)"] = [
            intercept + per_s * x[i] if i in soak else None for i in range(len(x))
        ]
    return x, lines
