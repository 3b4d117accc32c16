"""Small self-contained SVG charts (no JavaScript, no network): lines, log-scale lines, heatmap."""

from __future__ import annotations

import html
import math

COLORS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
W, H, LEFT, RIGHT, TOP, BOTTOM = 760, 280, 64, 170, 28, 40


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def line_chart(
    title: str,
    series: dict[str, tuple[list[float], list[float]]],
    x_label: str,
    y_label: str,
    log_y: bool = False,
) -> str:
    """One line per series of (xs, ys); non-finite (and, on a log axis, non-positive) points skipped."""

    def ok(y: float) -> bool:
        return math.isfinite(y) and (y > 0 or not log_y)

    pts = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys, strict=True) if ok(y)]
    head = f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' font-family='sans-serif'>"
    parts = [head, f"<text x='{LEFT}' y='18' font-size='14'>{html.escape(title)}</text>"]
    if not pts:
        return "".join([*parts, f"<text x='{LEFT}' y='{H // 2}' font-size='12'>no data</text></svg>"])
    tf = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(tf(p[1]) for p in pts), max(tf(p[1]) for p in pts)
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    if x1 == x0:
        x1 = x0 + 1
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return TOP + ph - (tf(y) - y0) / (y1 - y0) * ph

    parts.append(f"<rect x='{LEFT}' y='{TOP}' width='{pw}' height='{ph}' fill='none' stroke='#999'/>")
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        v = y0 + frac * (y1 - y0)
        label = _fmt(10**v) if log_y else _fmt(v)
        yy = TOP + ph - frac * ph
        parts.append(f"<line x1='{LEFT}' x2='{LEFT + pw}' y1='{yy:.1f}' y2='{yy:.1f}' stroke='#eee'/>")
        parts.append(f"<text x='{LEFT - 6}' y='{yy + 4:.1f}' font-size='11' text-anchor='end'>{label}</text>")
    parts.append(f"<text x='{LEFT}' y='{H - 22}' font-size='11'>{_fmt(x0)}</text>")
    parts.append(f"<text x='{LEFT + pw}' y='{H - 22}' font-size='11' text-anchor='end'>{_fmt(x1)}</text>")
    parts.append(
        f"<text x='{LEFT + pw / 2}' y='{H - 8}' font-size='11' text-anchor='middle'>"
        f"{html.escape(x_label)}</text>"
    )
    parts.append(
        f"<text x='12' y='{TOP + ph / 2}' font-size='11' transform='rotate(-90 12 {TOP + ph / 2})' "
        f"text-anchor='middle'>{html.escape(y_label)}{' (log)' if log_y else ''}</text>"
    )
    for i, (name, (xs, ys)) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        coords = [f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys, strict=True) if ok(y)]
        if len(coords) == 1:
            cx, cy = coords[0].split(",")
            parts.append(f"<circle cx='{cx}' cy='{cy}' r='3' fill='{color}'/>")
        elif coords:
            parts.append(
                f"<polyline fill='none' stroke='{color}' stroke-width='1.5' points='{' '.join(coords)}'/>"
            )
        if i < 16:
            ly = TOP + 12 + i * 15
            parts.append(f"<rect x='{LEFT + pw + 10}' y='{ly - 8}' width='10' height='3' fill='{color}'/>")
            parts.append(
                f"<text x='{LEFT + pw + 24}' y='{ly}' font-size='11'>{html.escape(name[:22])}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def heatmap(
    title: str,
    rows: list[str],
    cols: list[str],
    values: list[list[float | None]],
    row_label: str,
    col_label: str,
    higher_is_better: bool = True,
) -> str:
    """A grid of cells coloured from worst (red) to best (green), each with its value."""
    cw, ch, left, top = 110, 40, 110, 50
    width, height = left + cw * len(cols) + 20, top + ch * len(rows) + 40
    flat = [v for row in values for v in row if v is not None and math.isfinite(v)]
    lo, hi = (min(flat), max(flat)) if flat else (0.0, 1.0)
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif'>",
        f"<text x='10' y='18' font-size='14'>{html.escape(title)}</text>",
        f"<text x='{left}' y='40' font-size='11'>{html.escape(col_label)} →</text>",
        f"<text x='10' y='40' font-size='11'>{html.escape(row_label)} ↓</text>",
    ]
    for j, c in enumerate(cols):
        parts.append(
            f"<text x='{left + j * cw + cw / 2}' y='{top - 2}' font-size='11' text-anchor='middle'>"
            f"{html.escape(c)}</text>"
        )
    for i, r in enumerate(rows):
        y = top + 4 + i * ch
        parts.append(
            f"<text x='{left - 8}' y='{y + ch / 2 + 4}' font-size='11' text-anchor='end'>{html.escape(r)}</text>"
        )
        for j, v in enumerate(values[i]):
            x = left + j * cw
            if v is None or not math.isfinite(v):
                fill, label = "#ddd", "—" if v is None else str(v)
            else:
                t = (v - lo) / (hi - lo) if hi > lo else 1.0
                t = t if higher_is_better else 1 - t
                fill, label = f"rgb({int(230 - 150 * t)},{int(90 + 140 * t)},110)", _fmt(v)
            parts.append(f"<rect x='{x}' y='{y}' width='{cw - 2}' height='{ch - 2}' fill='{fill}'/>")
            parts.append(
                f"<text x='{x + cw / 2}' y='{y + ch / 2 + 4}' font-size='12' text-anchor='middle'>"
                f"{label}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)
