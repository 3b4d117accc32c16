"""report.md and report.html from summary.json (and timeseries.jsonl), following
the performance-test report template: environment; metric / target / actual /
status; bottleneck analysis from the measured breakdown; suggestions that follow
from what was measured."""

from __future__ import annotations

import html
from pathlib import Path

from loadtest import svg, trust
from loadtest.advice import bottlenecks, suggestions
from loadtest.results import Latency, PhaseResult, Summary
from loadtest.series import Point, read_points
from loadtest.slices import slice_lines
from loadtest.stability import stability_lines


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}" if x < 10 else f"{x:.1f}"


def environment_lines(s: Summary) -> list[str]:
    p = s.provenance
    t = p.target
    hw = p.hardware
    libs = ", ".join(f"{k} {v}" for k, v in p.libraries.items())
    gpu = p.server_gpu or {}
    server = p.server or {}
    device = server.get("device") or t.device or "not reported"
    gpu_text = ", ".join(g.get("name", "?") for g in gpu.get("gpus", [])) or gpu.get("status") or (
        "none (the model runs on CPU)" if device == "cpu" else "not reported (give --server-metrics-url)"
    )
    inputs = ", ".join(f"{i.name} {i.datatype}{i.shape}" for i in t.inputs)
    return [
        f"- Harness: modelsoak {p.harness.version} (git {p.harness.git_sha})",
        f"- Target: {t.protocol} at {t.host} — {t.server or '?'} {t.server_version}".rstrip(),
        f"- Model: {t.model or '?'} version {t.version or 'default'} on {t.platform or '?'}"
        + (f", sha256 {t.sha256[:16]}…" if t.sha256 else ""),
        f"- Inputs per request: {inputs or 'n/a'}",
        f"- Server device: {device}; GPU: {gpu_text}",
        f"- Load generator: {hw.cpu} ({hw.cpu_count} CPUs, {hw.memory_bytes / 2**30:.1f} GiB), "
        f"{hw.os}, Python {hw.python}; workers: {', '.join(p.workers)}",
        f"- Libraries: {libs}",
        f"- Scenario: {s.scenario}; seed {p.seed}; run {s.run_id}, {s.duration_s:.0f} s",
    ]


def slo_table(s: Summary) -> list[str]:
    rows = ["| Metric | Target | Actual | Status |", "|---|---|---|---|"]
    for c in s.slo:
        note = f" ({c.note})" if c.note and not c.passed else ""
        rows.append(f"| {c.metric} | {c.target} | {c.actual}{note} | {'PASS' if c.passed else 'FAIL'} |")
    return rows


def _pct(lat: Latency | None, key: str) -> str:
    """A percentile, or why it cannot be given (loadtest.trust)."""
    return trust.shown(lat, key) or _ms(lat.at(key) if lat else None)


def phase_table(s: Summary) -> list[str]:
    rows = [
        "| Phase | Users | Batch | Requests | Failures | Req/s | Goodput/s | Samples/s | p50 ms | p95 ms "
        "| p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ph in s.phases:
        lat = ph.latency_ms
        rows.append(
            f"| {ph.name} | {ph.users}{' @ ' + format(ph.rate, 'g') + '/s' if ph.rate else ''} | "
            f"{ph.batch_size} | {ph.requests} | {ph.failures} | "
            f"{ph.rps:.1f} | {_goodput(ph)} | {ph.samples_per_s:.1f} | {_pct(lat, 'p50')} | "
            f"{_pct(lat, 'p95')} | {_pct(lat, 'p99')} | {_ms(lat.max if lat else None)} |"
        )
    return rows


def _goodput(ph: PhaseResult) -> str:
    if ph.goodput_latency_ms is None:
        return f"{ph.goodput_rps:.1f}"
    return f"{ph.goodput_rps:.1f} (<= {ph.goodput_latency_ms:g} ms)"


def confidence_table(s: Summary) -> list[str]:
    """Every percentile with its sample count and distribution-free interval."""
    rows: list[str] = []
    for name, lat in [(ph.name, ph.latency_ms) for ph in s.phases] + [("all", s.totals.latency_ms)]:
        if lat is None or not lat.ci:
            continue
        if not rows:
            rows = [
                f"Intervals at {lat.confidence:.0%} confidence from order statistics (no assumption about "
                "the distribution); a percentile needs the samples shown to be bounded at all.",
                "",
                "| Phase | Percentile | Value ms | Interval ms | Samples |",
                "|---|---|---|---|---|",
            ]
        for key, b in lat.ci.items():
            if not b.enough:
                value, interval = f"not enough samples ({b.n} of {b.needed})", "—"
            else:
                value = _ms(lat.at(key))
                hi = "unbounded" if b.high is None else _ms(b.high)
                interval = f"{_ms(b.low)} … {hi}"
            rows.append(f"| {name} | {key} | {value} | {interval} | {b.n} (needs {b.needed}) |")
    return rows


def _capacity(s: Summary) -> list[str]:
    if s.stress is None:
        return []
    best = s.stress.highest_held
    lines = ["## Capacity", "", f"- Highest load that held the SLO: {best.name if best else 'none'}"]
    k = s.stress.knee
    if k is not None:
        lines.append(
            f"- Latency bends (throughput stops following load) at {k.at}: "
            f"{k.samples_per_s:.1f} samples/s, p99 {_ms(k.p99_ms)} ms"
        )
    return [*lines, ""]


def _generator(s: Summary) -> list[str]:
    g = s.generator
    lines = ["## Load generator", ""]
    for w, v in g.workers.items():
        lines.append(
            f"- {w}: CPU mean {v.cpu_mean:.0f} %, max {v.cpu_max:.0f} %, "
            f"saturated {v.saturated_fraction:.0%} of the time"
        )
    ol = g.openloop
    if ol.scheduled:
        lines.append(
            f"- Open loop: {ol.scheduled} sends scheduled = {ol.measured} measured + {ol.dropped} dropped + "
            f"{ol.unfinished} unfinished at stop ({ol.warmup} of the measured were warm-up); "
            f"{ol.late} dispatched late; the dispatcher trailed its schedule by "
            f"{ol.max_behind_ms:.1f} ms at worst"
        )
        short = " — the server did not keep up" if ol.sustained_rps < 0.95 * ol.offered_rps else ""
        lines.append(f"- Sustained {ol.sustained_rps:.0f}/s of {ol.offered_rps:.0f}/s offered{short}")
    lat = s.totals.latency_ms
    if lat is not None and lat.lower_bounds:
        lines.append(
            f"- Lower bounds: {', '.join(lat.lower_bounds)} — sends unfinished at stop entered with "
            "their wait so far; the true values are at least these"
        )
    if g.lost_workers:
        lines.append(f"- Lost workers: {', '.join(g.lost_workers)}")
    return [*lines, ""]


def markdown(s: Summary) -> str:
    lines = [
        f"# modelsoak report — {s.run_id}",
        "",
        f"**Verdict: {s.verdict}** (exit code {s.exit_code})",
        "",
    ]
    if s.generator.invalid_reasons:
        lines += ["The run is invalid:", *[f"- {r}" for r in s.generator.invalid_reasons], ""]
    lines += ["## Test environment", "", *environment_lines(s), ""]
    lines += ["## Results", "", *slo_table(s), ""]
    lines += ["## Phases", "", *phase_table(s), ""]
    lines += [
        f"Goodput over the run: {s.totals.goodput_rps:.1f} requests/s met the latency SLO "
        f"(of {s.totals.rps:.1f}/s that succeeded)",
        "",
    ]
    conf = confidence_table(s)
    lines += ["## Percentile confidence", "", *conf, ""] if conf else []
    sliced = slice_lines(s.slices, s.drift)
    lines += ["## Time slices", "", *sliced, ""] if sliced else []
    if s.stability:
        lines += ["## Stability windows", "", *stability_lines(s.stability)]
    lines += _capacity(s)
    lines += ["## Bottleneck analysis", "", *[f"- {b}" for b in bottlenecks(s)], ""]
    lines += ["## Optimisation suggestions", "", *[f"- {x}" for x in suggestions(s)], ""]
    lines += _generator(s)
    if s.baseline is not None:
        b = s.baseline
        lines += [f"## Against the baseline ({b.path})", ""]
        lines += [
            f"- {c.metric}: {c.actual} (limit {c.target}) — {'PASS' if c.passed else 'FAIL'}"
            for c in b.checks
        ] + [""]
    lines += ["Files: summary.json, report.html, timeseries.jsonl", ""]
    return "\n".join(lines)


def read_series(results: Path) -> list[Point]:
    return read_points(results / "timeseries.jsonl")


def html_report(s: Summary, series: list[Point]) -> str:
    md = markdown(s)
    charts = svg.charts(s, series)
    body = svg.markdown_to_html(md)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>modelsoak {html.escape(s.run_id)}</title><style>{svg.CSS}</style></head><body>"
        f"{body}<h2>Charts</h2>{charts}</body></html>"
    )


def write(results: Path, summary: Summary) -> None:
    (results / "report.md").write_text(markdown(summary))
    (results / "report.html").write_text(html_report(summary, read_series(results)))


def verdict_table(s: Summary, results: Path) -> str:
    width = max([len(c.metric) for c in s.slo] + [20])
    lines = ["", f"modelsoak verdict: {s.verdict} (exit code {s.exit_code})", ""]
    lines.append(f"{'metric':<{width}}  {'target':<22} {'actual':<28} status")
    for c in s.slo:
        lines.append(f"{c.metric:<{width}}  {c.target:<22} {c.actual:<28} {'PASS' if c.passed else 'FAIL'}")
    for r in s.generator.invalid_reasons:
        lines.append(f"INVALID: {r}")
    lines += ["", f"report: {results / 'report.md'}", f"        {results / 'report.html'}", ""]
    return "\n".join(lines)
