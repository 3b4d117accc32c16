"""The report's charts: latency percentiles and throughput over time (with the
run's events marked), the latency distribution, server memory with its fitted
trend, where a request's time goes per phase, and the time slices — inline SVG
in report.html, PNGs in results/charts/ that report.md links.

Each chart is a function of the summary and the time series that returns a
figure, or None when the run has nothing for it (no series points, no server
breakdown, no memory samples)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from loadtest.events import Marker, run_events, slo_thresholds
from loadtest.plotting import (
    COLORS,
    PLAIN,
    SIZE,
    Chart,
    Rendered,
    distribution_chart,
    draw_events,
    legend_below,
    made,
    markers,
    memory_limits,
    new_figure,
    plain,
    render,
    style,
    thin,
    time_axis,
    value_axis,
)
from loadtest.results import Latency, Summary
from loadtest.series import Point
from loadtest.slices import slice_chart_lines
from server.stats import PHASES

__all__ = ["Rendered", "build", "draw"]


def latency_over_time(s: Summary, series: list[Point], events: list[Marker]) -> Figure | None:
    if not any(p.p50_ms is not None for p in series):
        return None
    cols = {q: [getattr(p, f"{q}_ms") for p in series] for q in ("p50", "p95", "p99")}
    t, ys, k = thin([p.t for p in series], cols, set(cols))
    fig = new_figure()
    ax = fig.add_subplot()
    for i, (q, y) in enumerate(ys.items()):
        ax.plot(t, y, color=COLORS[i], linewidth=1.3, label=q, gid=f"latency-{q}", **markers(len(t)))
    for j, (name, limit) in enumerate(slo_thresholds(s)):
        ax.axhline(
            limit, color=COLORS[3 + j % 4], linestyle="--", linewidth=1, label=f"SLO {name} {plain(limit)} ms"
        )
    every = f", the worst of every {k} points" if k > 1 else ""
    ax.set_title(f"Client latency per {_interval(series)} (merged HDR histograms{every})", loc="left")
    time_axis(ax)
    value_axis(ax, "latency (ms)")
    legend_below(fig, ax, draw_events(ax, events, float(t[-1]), "latency"))
    return fig


def tokens_over_time(s: Summary, series: list[Point], events: list[Marker]) -> Figure | None:
    """Streamed requests: TTFT and ITL percentiles per series interval."""
    keys = ("ttft_p50", "ttft_p99", "itl_p50", "itl_p99")
    if not any(p.ttft_p50_ms is not None or p.itl_p50_ms is not None for p in series):
        return None
    cols = {k: [getattr(p, f"{k}_ms") for p in series] for k in keys}
    t, ys, k = thin([p.t for p in series], cols, set(cols))
    fig = new_figure()
    ax = fig.add_subplot()
    for i, (key, y) in enumerate(ys.items()):
        label = key.replace("_", " ").upper().replace("P50", "p50").replace("P99", "p99")
        ax.plot(t, y, color=COLORS[i], linewidth=1.3, label=label, gid=f"tokens-{key}", **markers(len(t)))
    every = f", the worst of every {k} points" if k > 1 else ""
    ax.set_title(f"Time to first token and inter-token latency per {_interval(series)}{every}", loc="left")
    ax.set_yscale("log")
    time_axis(ax)
    value_axis(ax, "ms (log)")
    legend_below(fig, ax, draw_events(ax, events, float(t[-1]), "tokens"))
    return fig


def _interval(series: list[Point]) -> str:
    if len(series) < 2:
        return "interval"
    step = float(np.median(np.diff([p.t for p in series])))
    return f"{plain(step)} s interval"


def throughput_over_time(s: Summary, series: list[Point], events: list[Marker]) -> Figure | None:
    if not series:
        return None
    offered = [getattr(p, "offered_rps", None) for p in series]
    cols: dict[str, list[float | None]] = {
        "rps": [p.rps for p in series],
        "fail": [p.fail_rps for p in series],
        "users": [float(p.users) for p in series],
        "offered": offered,
    }
    t, ys, k = thin([p.t for p in series], cols, {"users"})
    fig = new_figure()
    ax = fig.add_subplot()
    m = markers(len(t))
    ax.plot(t, ys["rps"], color=COLORS[0], linewidth=1.3, label="delivered (successful answers/s)", **m)
    ax.plot(t, ys["fail"], color=COLORS[1], linewidth=1.1, label="errors/s", **m)
    if np.any(~np.isnan(ys["offered"])):
        ax.plot(
            t,
            ys["offered"],
            color=COLORS[2],
            linestyle="--",
            linewidth=1.2,
            label="offered (scheduled sends/s)",
            gid="throughput-offered",
        )
    else:
        open_loop = [ph for ph in s.phases if ph.rate > 0]
        for i, ph in enumerate(open_loop):
            label: dict[str, Any] = {"label": "offered (the phase's open-loop rate)"} if i == 0 else {}
            ax.hlines(ph.rate, ph.started_s, max(ph.ended_s, ph.started_s), color=COLORS[2], linestyle="--",
                      linewidth=1.2, gid=f"throughput-offered-{i}", **label)  # fmt: skip
    every = f"; means of every {k} points" if k > 1 else ""
    ax.set_title(f"Throughput and errors per {_interval(series)}, users on the right{every}", loc="left")
    time_axis(ax)
    value_axis(ax, "requests/s")
    users = ax.twinx()
    users.step(t, ys["users"], where="post", color="#7f7f7f", linewidth=1, alpha=0.8, label="users")
    users.set_ylabel("users")
    users.set_ylim(bottom=0, top=max(1.0, float(np.nanmax(ys["users"]))) * 1.15)
    users.yaxis.set_major_locator(MaxNLocator(integer=True))
    users.grid(False)
    legend_below(fig, ax, draw_events(ax, events, float(t[-1]), "throughput"), [ax, users])
    return fig


def latency_distribution(s: Summary) -> Figure | None:
    lines: list[tuple[str, Latency]] = [("whole run", s.totals.latency_ms)] if s.totals.latency_ms else []
    if 1 < len(s.phases) <= len(COLORS) - 1:
        lines += [(ph.name, ph.latency_ms) for ph in s.phases if ph.latency_ms is not None]
    return distribution_chart(lines, "Latency distribution (HDR percentile plot of the merged histograms)")


def token_distribution(s: Summary) -> Figure | None:
    """Streamed requests: TTFT, ITL and TPOT over the whole run."""
    st = s.totals.streaming
    if st is None:
        return None
    lines = [(label, lat) for label, lat in (("time to first token", st.ttft_ms), ("inter-token latency", st.itl_ms),
                                             ("time per output token", st.tpot_ms)) if lat is not None]  # fmt: skip
    return distribution_chart(
        lines, "Token timing distribution (HDR percentile plot of the merged histograms)"
    )


def memory_chart(s: Summary, events: list[Marker]) -> Figure | None:
    mem = s.memory
    if not mem.available or mem.series is None or not mem.series.t:
        return None
    t, ys, k = thin(mem.series.t, {"b": list(mem.series.bytes)}, {"b"})
    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot(
        t, ys["b"] / 2**20, color=COLORS[0], linewidth=1.3, label=f"{mem.source} (MiB)", **markers(len(t))
    )
    leak = mem.leak
    slope = leak.slope_bytes_per_s if leak else None
    if slope is not None and math.isfinite(slope) and len(mem.series.t) > 1:
        mt, mb = np.array(mem.series.t), np.array(mem.series.bytes)
        intercept = float(np.median(mb - slope * mt))
        ends = np.array([mt[0], mt[-1]])
        verdict = "leak suspected" if leak and leak.suspected else "no leak"
        ax.plot(ends, (intercept + slope * ends) / 2**20, color=COLORS[1], linestyle="--", linewidth=1.3,
                label=f"Theil-Sen trend: {plain(slope * 3600 / 2**20)} MiB/h ({verdict})")  # fmt: skip
    every = f", the highest of every {k} samples" if k > 1 else ""
    ax.set_title(f"Server memory over time with its fitted trend{every}", loc="left")
    time_axis(ax)
    value_axis(ax, "memory (MiB)")
    memory_limits(ax, [ys["b"]])
    legend_below(fig, ax, draw_events(ax, events, float(t[-1]), "memory"))
    return fig


SEND_WAIT, TRANSPORT, OUTSIDE = (
    "waiting for a send slot",
    "transport (network, serialisation)",
    "outside server",
)


def _outside(total: float, client_mean: float, split: dict[str, float] | None) -> dict[str, float]:
    """The client's time beyond the server's total: split into the wait for a free
    user (open loop) and the call's transport where the run measured them."""
    if split and "call" in split:
        return {SEND_WAIT: split.get("send_wait", 0.0), TRANSPORT: max(split["call"] - total, 0.0)}
    return {OUTSIDE: max(client_mean - total, 0.0)}


def breakdown_chart(s: Summary) -> Figure | None:
    """Stacked bars, one per scenario phase: the server's stages, then what is
    left of the client's mean (the wait for a send slot, transport)."""
    rows: list[tuple[str, dict[str, float]]] = []
    for ph in s.phases:
        bd = ph.server_breakdown
        if bd is None or ph.latency_ms is None:
            continue
        means = {k: bd.phases[k].mean_ms for k in PHASES if k in bd.phases and k != "total"}
        total = bd.phases["total"].mean_ms if "total" in bd.phases else sum(means.values())
        # The server's total holds more than its timed stages (decoding, encoding, dispatch).
        means["server, other"] = max(total - sum(means.values()), 0.0)
        rows.append((ph.name, {**means, **_outside(total, ph.latency_ms.mean, ph.client_split_ms)}))
    if not rows and s.server_breakdown.available:
        b = s.server_breakdown
        means = {k: b.mean_ms[k] for k in PHASES if k in b.mean_ms and k != "total"}
        means["server, other"] = max(b.mean_ms.get("total", 0.0) - sum(means.values()), 0.0)
        split = {SEND_WAIT: b.send_wait_ms, TRANSPORT: b.transport_ms}
        rows.append(
            (
                "run",
                {**means, **(split if b.send_wait_ms or b.transport_ms else {OUTSIDE: b.outside_server_ms})},
            )
        )
    if not rows:
        return None
    rows = rows[-40:]  # a long repeat list keeps its latest phases
    fig = new_figure((SIZE[0], max(2.2, 0.9 + 0.35 * len(rows))))
    ax = fig.add_subplot()
    names = [name for name, _ in rows]
    parts = list(dict.fromkeys(k for _, r in rows for k in r))
    left = np.zeros(len(rows))
    for i, part in enumerate(parts):
        v = np.array([r.get(part, 0.0) for _, r in rows])
        greys = {OUTSIDE: "#bbbbbb", TRANSPORT: "#bbbbbb", SEND_WAIT: "#8c8c8c", "server, other": "#dddddd"}
        color = greys.get(part, COLORS[i % len(COLORS)])
        ax.barh(names, v, left=left, color=color, label=part, height=0.6)
        left += v
    ax.invert_yaxis()
    ax.set_xlabel("mean time per request (ms)")
    ax.xaxis.set_major_formatter(PLAIN)
    ax.grid(axis="y", visible=False)
    ax.set_title("Where a request's time goes, per phase (the server's own timing, then the client's)",
                 loc="left")  # fmt: skip
    legend_below(fig, ax, [])
    return fig


def slices_chart(s: Summary, events: list[Marker]) -> Figure | None:
    if len(s.slices) < 2:  # one slice is a point: the table says it better
        return None
    x, lines = slice_chart_lines(s.slices, s.drift)
    fig = new_figure()
    ax = fig.add_subplot()
    for i, (name, ys) in enumerate(lines.items()):
        y = np.array([np.nan if v is None else v for v in ys], dtype=float)
        style = {"linestyle": "--"} if "trend" in name else {"marker": "o", "markersize": 3}
        ax.plot(x, y, color=COLORS[i], linewidth=1.3, label=name, **style)
    ax.set_title("Latency per time slice (with the soak's p99 trend)", loc="left")
    time_axis(ax)
    value_axis(ax, "latency (ms)")
    legend_below(fig, ax, draw_events(ax, events, max(x), "slices"))
    return fig


def build(s: Summary, series: list[Point], between: Callable[[], None] | None = None) -> list[Chart]:
    events = run_events(s, series)
    makers: list[tuple[str, str, Callable[[], Figure | None]]] = [
        ("latency", "Latency percentiles over time", lambda: latency_over_time(s, series, events)),
        (
            "throughput",
            "Throughput, errors and users over time",
            lambda: throughput_over_time(s, series, events),
        ),
        ("distribution", "Latency distribution", lambda: latency_distribution(s)),
        ("tokens", "Token timing distribution", lambda: token_distribution(s)),
        ("tokens-over-time", "Token timing over time", lambda: tokens_over_time(s, series, events)),
        ("memory", "Server memory over time, with the fitted trend", lambda: memory_chart(s, events)),
        ("breakdown", "Where a request's time goes, per phase", lambda: breakdown_chart(s)),
        ("slices", "Latency per time slice", lambda: slices_chart(s, events)),
    ]
    return made(makers, between)


def draw(
    s: Summary, series: list[Point], folder: Path | None, between: Callable[[], None] | None = None
) -> list[Rendered]:
    """The report's charts; `between` runs before each chart is drawn and saved (the
    master yields to its other greenlets there: a day-long soak's charts take
    seconds, longer than a worker waits for a heartbeat)."""
    with style():
        return render(build(s, series, between), folder, between)
