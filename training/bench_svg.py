"""Small self-contained SVG line and stacked-area charts for the bench report
(no plotting library needed; the HTML report embeds them, the Markdown links them)."""

from __future__ import annotations

from html import escape

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 260, 64, 150, 28, 36
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#7f7f7f")


def _fmt(v: float) -> str:
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.2f}G"
    if a >= 1e6:
        return f"{v / 1e6:.1f}M"
    if a >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.3g}"


def chart(
    title: str,
    series: list[tuple[str, list[float], list[float]]],
    x_label: str,
    y_label: str,
    stacked: bool = False,
) -> str:
    """series: (label, xs, ys). stacked: areas summed bottom-up (shares of a whole)."""
    series = [(n, list(x), list(y)) for n, x, y in series if len(x) and len(x) == len(y)]
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">'
    parts = [head, f'<text x="{PAD_L}" y="16" font-size="13">{escape(title)}</text>']
    if not series:
        parts.append(f'<text x="{PAD_L}" y="{H / 2}">no data</text></svg>')
        return "".join(parts)
    xs = [x for _, sx, _ in series for x in sx]
    x0, x1 = min(xs), max(xs)
    if stacked:
        tops = [sum(vals) for vals in zip(*(s[2] for s in series), strict=False)]
        y1 = max(max(tops), 1e-12)
    else:
        y1 = max(max(max(s[2]) for s in series), 1e-12)
    y0 = 0.0
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def px(x: float) -> float:
        return PAD_L + (x - x0) / ((x1 - x0) or 1) * pw

    def py(y: float) -> float:
        return PAD_T + ph - (y - y0) / ((y1 - y0) or 1) * ph

    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        parts.append(
            f'<line x1="{PAD_L}" x2="{PAD_L + pw}" y1="{py(yv):.1f}" y2="{py(yv):.1f}" stroke="#ddd"/>'
        )
        parts.append(f'<text x="{PAD_L - 4}" y="{py(yv) + 4:.1f}" text-anchor="end">{_fmt(yv)}</text>')
    parts.append(f'<text x="{PAD_L}" y="{H - 6}">{_fmt(x0)}</text>')
    parts.append(f'<text x="{PAD_L + pw}" y="{H - 6}" text-anchor="end">{_fmt(x1)}</text>')
    parts.append(f'<text x="{PAD_L + pw / 2}" y="{H - 6}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(
        f'<text transform="translate(12,{PAD_T + ph / 2}) rotate(-90)" text-anchor="middle">{escape(y_label)}</text>'
    )
    base = [0.0] * len(series[0][1])
    for i, (name, sx, sy) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        if stacked:
            top = [b + v for b, v in zip(base, sy, strict=False)]
            pts = [f"{px(x):.1f},{py(t):.1f}" for x, t in zip(sx, top, strict=False)]
            back = [f"{px(x):.1f},{py(b):.1f}" for x, b in zip(reversed(sx), reversed(base), strict=False)]
            parts.append(f'<polygon points="{" ".join(pts + back)}" fill="{colour}" fill-opacity="0.7"/>')
            base = top
        else:
            pts = [f"{px(x):.1f},{py(y):.1f}" for x, y in zip(sx, sy, strict=False)]
            parts.append(
                f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
            )
            if len(sx) == 1:
                parts.append(f'<circle cx="{px(sx[0]):.1f}" cy="{py(sy[0]):.1f}" r="3" fill="{colour}"/>')
        ly = PAD_T + 14 * i + 8
        parts.append(f'<rect x="{W - PAD_R + 10}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{W - PAD_R + 24}" y="{ly + 1}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
