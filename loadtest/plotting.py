"""What the report's and the comparison's charts share (loadtest.charts,
loadtest.compare_charts): matplotlib figures made with `matplotlib.figure.Figure`,
not pyplot, so no backend or global figure state is touched (Agg draws the PNG,
the SVG backend the SVG); readable ticks; series thinned to at most MAX_POINTS
per line (percentiles keep the worst of each bin, rates its mean), so size and
drawing time stay bounded whatever the run's length; event markers; the HDR
percentile plot; PNG and inline-SVG output."""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

from loadtest.events import Marker
from loadtest.results import Latency

log = logging.getLogger("modelsoak.loadgen")


MAX_POINTS = 1500


SIZE = (10.0, 3.8)  # inches; 100 dpi PNGs are 1000 px wide


COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


STYLE: Any = {  # matplotlib's stubs type rc keys as literals
    "font.size": 9,
    "axes.grid": True,
    "grid.color": "#e5e5e5",
    "axes.spines.top": False,
    "svg.hashsalt": None,  # unique ids: several charts share one HTML page
}


EVENT_STYLE: dict[str, Any] = {
    "phase": {"color": "#888888", "linestyle": ":", "label": "phase change"},
    "worker lost": {"color": "#d62728", "linestyle": "--", "label": "worker lost"},
    "unreachable": {"color": "#d62728", "linestyle": "-", "label": "target unreachable"},
    "slo": {"color": "#ff7f0e", "linestyle": "-.", "label": "SLO broken"},
}


OTHER_EVENT: dict[str, Any] = {"color": "#9467bd", "linestyle": "--", "label": "event"}


@dataclass
class Chart:
    key: str  # file name stem: charts/<key>.png
    title: str
    figure: Figure


@dataclass
class Rendered:
    key: str
    title: str
    png: str  # path relative to the results folder
    svg: str  # inline <svg> element


def plain(value: float, _pos: object = None) -> str:
    """Tick labels people read: 0.25, 12.5, 4,520 — never 4.52e+03."""
    if value == 0:
        return "0"
    a = abs(value)
    if a >= 100:
        return f"{value:,.0f}"
    if a >= 1:
        return f"{value:.3g}" if a >= 10 else f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


PLAIN = FuncFormatter(plain)


def new_figure(size: tuple[float, float] = SIZE) -> Figure:
    return Figure(figsize=size, layout="constrained")


def time_axis(ax: Axes) -> None:
    ax.set_xlabel("time since the run started (s)")
    ax.xaxis.set_major_formatter(PLAIN)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=10, steps=[1, 2, 2.5, 5, 10]))
    ax.set_xlim(left=0)


def value_axis(ax: Axes, label: str) -> None:
    ax.set_ylabel(label)
    ax.yaxis.set_major_formatter(PLAIN)
    ax.set_ylim(bottom=0)


def thin(
    t: Sequence[float], cols: Mapping[str, Sequence[float | None]], worst: set[str]
) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """At most MAX_POINTS per line: bins of k consecutive points, each drawn at its
    last time, the columns in `worst` as the bin's maximum, the others as its mean."""
    n = len(t)
    k = max(1, math.ceil(n / MAX_POINTS))
    arr = {name: np.array([np.nan if v is None else v for v in ys], dtype=float) for name, ys in cols.items()}
    if k == 1:
        return np.array(t, dtype=float), arr, 1
    idx = list(range(0, n, k))
    tt = np.array([t[min(i + k, n) - 1] for i in idx])
    out = {}
    for name, ys in arr.items():
        bins = [ys[i : i + k] for i in idx]
        pick = np.max if name in worst else np.mean
        out[name] = np.array([pick(b[~np.isnan(b)]) if np.any(~np.isnan(b)) else np.nan for b in bins])
    return tt, out, k


def markers(n: int) -> dict[str, Any]:
    """Points too few to draw a line on still show."""
    return {"marker": "o", "markersize": 3} if n < 30 else {}


def draw_events(ax: Axes, events: list[Marker], x_max: float, chart: str) -> list[Any]:
    """Vertical markers (spans for the unreachable target); phase names along the
    top. Each marker's SVG id is <chart>-event-<kind>-<n>. Returns one legend
    handle per kind drawn."""
    kinds: dict[str, dict[str, Any]] = {}
    trans = ax.get_xaxis_transform()
    labelled = [e for e in events if e.kind == "phase"]
    for n, e in enumerate(events):
        if e.t_s > x_max * 1.02 + 1:
            continue
        style = EVENT_STYLE.get(e.kind, OTHER_EVENT)
        kinds.setdefault(e.kind, style)
        gid = f"{chart}-event-{e.kind.replace(' ', '-')}-{n}"
        if e.end_s is not None and e.end_s > e.t_s:
            ax.axvspan(e.t_s, e.end_s, color=style["color"], alpha=0.12, linewidth=0, gid=f"{gid}-span")
        ax.axvline(e.t_s, color=style["color"], linestyle=style["linestyle"], linewidth=1, alpha=0.9, gid=gid)
    if 1 < len(labelled) <= 24:
        for e in labelled:
            ax.text(e.t_s, 0.98, f" {e.detail}", transform=trans, rotation=90, va="top", ha="left",
                    fontsize=7, color="#555555", clip_on=True)  # fmt: skip
    handles: list[Any] = []
    for kind, style in kinds.items():
        if kind == "phase" and len(labelled) < 2:
            continue  # the run's one phase begins at 0: no change to mark
        if kind == "unreachable":
            handles.append(Patch(color=style["color"], alpha=0.25, label=style["label"]))
        else:
            name = style["label"] if kind in EVENT_STYLE else kind
            handles.append(Line2D([], [], color=style["color"], linestyle=style["linestyle"], label=name))
    return handles


def legend_below(fig: Figure, ax: Axes, extra: list[Any], axes: list[Axes] | None = None) -> None:
    handles: list[Any] = []
    labels: list[str] = []
    for a in axes or [ax]:
        h, lab = a.get_legend_handles_labels()
        handles += h
        labels += lab
    for h in extra:
        handles.append(h)
        labels.append(h.get_label())
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8,
                   frameon=False)  # fmt: skip


def _distribution_points(lat: Latency) -> tuple[np.ndarray, np.ndarray, float]:
    """x = 1/(1 - q) and ms, without the maximum (x would be infinite), and the maximum."""
    pairs = lat.distribution or [
        [0.0, lat.min], [50.0, lat.p50], [90.0, lat.p90], [95.0, lat.p95], [99.0, lat.p99], [99.9, lat.p99_9]
    ]  # fmt: skip
    q = np.array([p for p, _ in pairs if p < 100.0])
    ms = np.array([v for p, v in pairs if p < 100.0])
    return 1.0 / (1.0 - q / 100.0), ms, lat.max


def percentile_axis(ax: Axes, x_max: float) -> None:
    """A log axis of 1/(1 - q) labelled by percentile: 0 %, 90 %, 99 %, 99.9 % ..."""
    ax.set_xscale("log")
    right = max(x_max, 10.0) * 1.5
    ticks = [1.0, 2.0] + [10.0**d for d in range(1, math.floor(math.log10(right)) + 1)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(FixedLocator([]))

    def label(x: float, _pos: object = None) -> str:
        q = 100.0 * (1.0 - 1.0 / x)
        return f"{q:.{max(0, round(math.log10(x)) - 2)}f} %"

    ax.xaxis.set_major_formatter(FuncFormatter(label))
    ax.set_xlim(1.0, right)
    ax.set_xlabel("percentile (log scale of 1/(1 - q): each step right is ten times rarer)")


def distribution_chart(lines: list[tuple[str, Latency]], title: str) -> Figure | None:
    lines = [(name, lat) for name, lat in lines if lat is not None and lat.count]
    if not lines:
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    x_max, y_all = 10.0, []
    for i, (name, lat) in enumerate(lines):
        x, ms, top = _distribution_points(lat)
        x_max = max(x_max, float(x[-1]) if len(x) else 10.0)
        width = 2.0 if i == 0 else 1.1
        ax.plot(x, ms, color=COLORS[i % len(COLORS)], linewidth=width, label=f"{name} (max {plain(top)} ms, n={lat.count:,})",
                **markers(len(x)))  # fmt: skip
        y_all += list(ms)
    percentile_axis(ax, x_max)
    ax.set_ylabel("latency (ms)")
    positive = [v for v in y_all if v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(PLAIN)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
    ax.set_title(title, loc="left")
    legend_below(fig, ax, [])
    return fig


def memory_limits(ax: Axes, lines: list[np.ndarray]) -> None:
    """Memory near its values, not from 0: a few MiB of growth on hundreds must show."""
    lo = min(float(np.nanmin(y)) for y in lines) / 2**20
    hi = max(float(np.nanmax(y)) for y in lines) / 2**20
    ax.set_ylim(max(0.0, lo - (hi - lo) * 0.5 - 1), hi + (hi - lo) * 0.3 + 1)


@contextmanager
def style() -> Iterator[None]:
    with matplotlib.rc_context(STYLE):
        yield


def made(
    makers: list[tuple[str, str, Callable[[], Figure | None]]], between: Callable[[], None] | None = None
) -> list[Chart]:
    """The charts that have data; one that fails to draw is logged and left out
    (the run's numbers matter more than a picture of them)."""
    out = []
    for key, title, make in makers:
        if between is not None:
            between()
        try:
            fig = make()
        except Exception:
            log.exception("the %s chart could not be drawn", key)
            continue
        if fig is not None:
            out.append(Chart(key, title, fig))
    return out


def svg_text(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg") :]


def render(
    charts: list[Chart], folder: Path | None, between: Callable[[], None] | None = None
) -> list[Rendered]:
    """Each chart's inline SVG and, with a folder, its PNG in folder/charts/."""
    if folder is not None:
        # The folder is ours: a chart drawn last time and not now (a report written again) goes.
        keep = {f"{c.key}.png" for c in charts}
        for old in (folder / "charts").glob("*.png"):
            if old.name not in keep:
                old.unlink()
        if charts:
            (folder / "charts").mkdir(parents=True, exist_ok=True)
    out = []
    for c in charts:
        if between is not None:
            between()
        png = f"charts/{c.key}.png"
        if folder is not None:
            c.figure.savefig(folder / png, format="png", dpi=100)
        out.append(Rendered(c.key, c.title, png, svg_text(c.figure)))
    return out
