"""Self-contained charts (inline SVG, no JavaScript, no network) and a small
Markdown-to-HTML for the report's own Markdown."""

from __future__ import annotations

import html
import re

import numpy as np

from loadtest.results import Summary
from loadtest.series import Point
from loadtest.slices import slice_chart_lines

CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "th{background:#f3f3f3}.chart{margin:1em 0}.chart h3{margin:0.2em 0}code{background:#f3f3f3}"
)
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
W, H, PAD = 900, 260, 50


def _scale(values: list[float], lo: float, hi: float, a: float, b: float) -> list[float]:
    span = hi - lo or 1.0
    return [a + (v - lo) / span * (b - a) for v in values]


def line_chart(title: str, x: list[float], lines: dict[str, list[float | None]], unit: str) -> str:
    """A line per series over shared x (seconds); None values break a line."""
    vals = [v for ys in lines.values() for v in ys if v is not None]
    if not x or not vals:
        return f"<div class='chart'><h3>{html.escape(title)}</h3><p>No data.</p></div>"
    x0, x1 = min(x), max(x)
    y0, y1 = 0.0, max(vals) * 1.1 or 1.0
    parts = [
        f"<svg width='{W}' height='{H}' xmlns='http://www.w3.org/2000/svg'>",
        f"<rect x='{PAD}' y='10' width='{W - PAD - 10}' height='{H - PAD - 10}' fill='none' stroke='#999'/>",
    ]
    for frac in (0.0, 0.5, 1.0):
        tick = y0 + frac * (y1 - y0)
        yy = H - PAD - frac * (H - PAD - 10)
        parts.append(f"<text x='4' y='{yy + 4:.0f}' font-size='11'>{tick:.3g}</text>")
        parts.append(f"<line x1='{PAD}' x2='{W - 10}' y1='{yy:.1f}' y2='{yy:.1f}' stroke='#eee'/>")
    parts.append(f"<text x='{PAD}' y='{H - 15}' font-size='11'>{x0:.0f} s</text>")
    parts.append(f"<text x='{W - 60}' y='{H - 15}' font-size='11'>{x1:.0f} s</text>")
    parts.append(f"<text x='{W // 2 - 20}' y='{H - 15}' font-size='11'>{html.escape(unit)}</text>")
    xs = _scale(x, x0, x1, PAD, W - 10)
    for i, (name, ys) in enumerate(lines.items()):
        color = COLORS[i % len(COLORS)]
        segs: list[list[str]] = []
        cur: list[str] = []
        for xx, yv in zip(xs, ys, strict=True):
            if yv is None:
                if cur:
                    segs.append(cur)
                cur = []
                continue
            yy = H - PAD - (yv - y0) / (y1 - y0) * (H - PAD - 10)
            cur.append(f"{xx:.1f},{yy:.1f}")
        if cur:
            segs.append(cur)
        for seg in segs:
            parts.append(
                f"<polyline fill='none' stroke='{color}' stroke-width='1.5' points='{' '.join(seg)}'/>"
            )
        parts.append(
            f"<text x='{PAD + 10 + i * 150}' y='25' font-size='12' fill='{color}'>{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return f"<div class='chart'><h3>{html.escape(title)}</h3>{''.join(parts)}</div>"


def bar_chart(title: str, parts: dict[str, float], unit: str) -> str:
    if not parts:
        return ""
    total = sum(parts.values()) or 1.0
    x = float(PAD)
    width = W - PAD - 10
    out = [f"<svg width='{W}' height='80' xmlns='http://www.w3.org/2000/svg'>"]
    legend = []
    for i, (name, v) in enumerate(parts.items()):
        w = v / total * width
        color = COLORS[i % len(COLORS)]
        out.append(f"<rect x='{x:.1f}' y='10' width='{max(w, 0.5):.1f}' height='30' fill='{color}'/>")
        legend.append(f"<span style='color:{color}'>■ {html.escape(name)}: {v:.3f} {unit}</span>")
        x += w
    out.append("</svg>")
    return f"<div class='chart'><h3>{html.escape(title)}</h3>{''.join(out)}<p>{' &nbsp; '.join(legend)}</p></div>"


def charts(s: Summary, series: list[Point]) -> str:
    t = [p.t for p in series]
    out = [
        line_chart(
            "Latency percentiles over time (client, HDR, per 2 s)",
            t,
            {
                "p50": [p.p50_ms for p in series],
                "p95": [p.p95_ms for p in series],
                "p99": [p.p99_ms for p in series],
            },
            "ms",
        ),
        line_chart(
            "Throughput and users over time",
            t,
            {"requests/s": [p.rps for p in series], "users": [float(p.users) for p in series]},
            "",
        ),
    ]
    if s.slices:
        sx, slines = slice_chart_lines(s.slices, s.drift)
        out.append(line_chart("Latency per time slice (with the soak's p99 trend)", sx, slines, "ms"))
    mem = s.memory
    if mem.available and mem.series is not None:
        mt, mb = mem.series.t, mem.series.bytes
        lines: dict[str, list[float | None]] = {f"{mem.source} (MiB)": [b / 2**20 for b in mb]}
        slope = mem.leak.slope_bytes_per_s if mem.leak else None
        if slope is not None and len(mt) > 1:
            arr_t, arr_b = np.array(mt), np.array(mb)
            intercept = float(np.median(arr_b - slope * arr_t))
            lines["Theil-Sen trend (MiB)"] = [(intercept + slope * tt) / 2**20 for tt in mt]
        out.append(line_chart("Server memory over time, with the fitted trend", mt, lines, "MiB"))
    bd = s.server_breakdown
    if bd.available:
        m = bd.mean_ms
        parts: dict[str, float] = {
            k: m[k] for k in ("queue", "batch_assembly", "h2d", "compute", "d2h") if k in m
        }
        parts["outside server"] = bd.outside_server_ms
        out.append(bar_chart("Where a request's time goes (means)", parts, "ms"))
    return "".join(out)


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_to_html(md: str) -> str:
    """Headings, bullet lists, pipe tables and paragraphs: what our report uses."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip("|").split("|")]
                if not all(set(c) <= {"-"} for c in cells):
                    rows.append(cells)
                i += 1
            head, *rest = rows
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rest]
            out.append("</table>")
            continue
        elif line.lstrip().startswith("- "):
            out.append("<ul>")
            while i < len(lines) and lines[i].lstrip().startswith("- "):
                out.append(f"<li>{_inline(lines[i].lstrip()[2:])}</li>")
                i += 1
            out.append("</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)
