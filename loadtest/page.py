"""A report page: our Markdown as HTML (Python-Markdown, tables), the charts
inline as SVG, one stylesheet; nothing is fetched when the page is viewed."""

from __future__ import annotations

import html

import markdown as md_lib

from loadtest.plotting import Rendered

CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "th{background:#f3f3f3}code{background:#f3f3f3}"
    "figure.chart{margin:1.5em 0}"
    "figure.chart svg{width:100%;height:auto;display:block}"
)


def _blank_before_blocks(text: str) -> str:
    """Python-Markdown starts a list or a table only after a blank line; our
    reports write "The run is invalid:" with its list right below."""
    out: list[str] = []
    for line in text.splitlines():
        block = line.startswith("|") or line.lstrip().startswith("- ")
        prev = out[-1] if out else ""
        prev_block = prev.startswith("|") or prev.lstrip().startswith("- ")
        if block and prev.strip() and not prev_block and not prev.startswith("#"):
            out.append("")
        out.append(line)
    return "\n".join(out)


def markdown_to_html(text: str) -> str:
    return md_lib.markdown(_blank_before_blocks(text), extensions=["tables", "sane_lists"])


def figures(charts: list[Rendered]) -> str:
    """The charts as <figure class="chart">, each with its SVG (its title is drawn in
    it); the page states how many there are (data-charts), so a reader (or a test)
    can tell one is missing."""
    return "".join(
        f"<figure class='chart' id='chart-{c.key}' aria-label='{html.escape(c.title)}'>{c.svg}</figure>"
        for c in charts
    )


def page(title: str, body_md: str, charts: list[Rendered], charts_heading: str = "Charts") -> str:
    section = f"<h2>{html.escape(charts_heading)}</h2>{figures(charts)}" if charts else ""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body data-charts='{len(charts)}'>"
        f"{markdown_to_html(body_md)}{section}</body></html>"
    )
