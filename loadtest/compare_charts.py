"""The comparison's charts (loadtest.compare): two runs overlaid on one time axis
(seconds since each run started), in the report's styles (loadtest.charts)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from loadtest.plotting import (
    Chart,
    distribution_chart,
    legend_below,
    made,
    markers,
    memory_limits,
    new_figure,
    thin,
    time_axis,
    value_axis,
)
from loadtest.results import Summary
from loadtest.series import Point

RUN_COLORS = ("#1f77b4", "#d62728")  # A blue, B red


@dataclass
class RunInput:
    label: str  # "A" or "B"
    path: Path
    summary: Summary
    series: list[Point]

    @property
    def name(self) -> str:
        return f"{self.label}: {self.summary.run_id}"


def latency(runs: list[RunInput]) -> Figure | None:
    if not any(p.p50_ms is not None for r in runs for p in r.series):
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    for color, r in zip(RUN_COLORS, runs, strict=False):
        cols = {q: [getattr(p, f"{q}_ms") for p in r.series] for q in ("p50", "p99")}
        t, ys, _ = thin([p.t for p in r.series], cols, set(cols))
        if not len(t):
            continue
        ax.plot(t, ys["p99"], color=color, linewidth=1.4, label=f"{r.name} p99", **markers(len(t)))
        ax.plot(t, ys["p50"], color=color, linewidth=1.0, linestyle="--", label=f"{r.name} p50")
    ax.set_title("Client latency over time: p99 (solid) and p50 (dashed) of each run", loc="left")
    time_axis(ax)
    value_axis(ax, "latency (ms)")
    legend_below(fig, ax, [])
    return fig


def throughput(runs: list[RunInput]) -> Figure | None:
    if not any(r.series for r in runs):
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    for color, r in zip(RUN_COLORS, runs, strict=False):
        cols = {"rps": [p.rps for p in r.series], "fail": [p.fail_rps for p in r.series]}
        t, ys, _ = thin([p.t for p in r.series], cols, set())
        if not len(t):
            continue
        ax.plot(t, ys["rps"], color=color, linewidth=1.4, label=f"{r.name} successful/s", **markers(len(t)))
        if np.nansum(ys["fail"]) > 0:
            ax.plot(t, ys["fail"], color=color, linewidth=1.0, linestyle=":", label=f"{r.name} errors/s")
    ax.set_title("Throughput over time", loc="left")
    time_axis(ax)
    value_axis(ax, "requests/s")
    legend_below(fig, ax, [])
    return fig


def memory(runs: list[RunInput]) -> Figure | None:
    have = [r for r in runs if r.summary.memory.available and r.summary.memory.series is not None]
    if not have:
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    drawn = []
    for r in have:
        series = r.summary.memory.series
        assert series is not None
        t, ys, _ = thin(series.t, {"b": list(series.bytes)}, {"b"})
        if not len(t):
            continue
        drawn.append(ys["b"])
        color = RUN_COLORS[0 if r.label == "A" else 1]
        ax.plot(t, ys["b"] / 2**20, color=color, linewidth=1.3, label=f"{r.name} {r.summary.memory.source}",
                **markers(len(t)))  # fmt: skip
    ax.set_title("Server memory over time", loc="left")
    time_axis(ax)
    value_axis(ax, "memory (MiB)")
    if not drawn:
        return None
    memory_limits(ax, drawn)
    legend_below(fig, ax, [])
    return fig


def distribution(runs: list[RunInput]) -> Figure | None:
    lines = [(r.name, r.summary.totals.latency_ms) for r in runs if r.summary.totals.latency_ms is not None]
    return distribution_chart(lines, "Latency distribution of each run (HDR percentile plot)")


def build(a: RunInput, b: RunInput) -> list[Chart]:
    runs = [a, b]
    return made(
        [
            ("latency", "Latency over time, both runs", lambda: latency(runs)),
            ("throughput", "Throughput over time, both runs", lambda: throughput(runs)),
            ("distribution", "Latency distribution, both runs", lambda: distribution(runs)),
            ("memory", "Server memory, both runs", lambda: memory(runs)),
        ]
    )
