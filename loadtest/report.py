"""report.md and report.html from summary.json (and timeseries.jsonl), following
the performance-test report template: environment; metric / target / actual /
status; bottleneck analysis from the measured breakdown; suggestions that follow
from what was measured."""

from __future__ import annotations

from pathlib import Path

import gevent

from loadtest import capacity, charts, page, repeats, trust, warmup
from loadtest.advice import diagnose
from loadtest.results import Latency, PhaseResult, Summary
from loadtest.series import Point, read_points
from loadtest.slices import slice_lines
from loadtest.stability import stability_lines
from loadtest.stream_report import streaming_lines


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
    status = gpu.get("status") or ""
    gpu_text = ", ".join(g.get("name", "?") for g in gpu.get("gpus", [])) or (
        f"none (the model runs on CPU{'; the server says: ' + status if status else ''})" if device == "cpu"
        else status or "not reported (give --server-metrics-url)"
    )  # fmt: skip
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
            f"| {ph.name} | {ph.users}{' @ ' + format(ph.rate, 'g') + '/s' if ph.rate else ''}{_running(ph)} | "
            f"{ph.batch_size} | {ph.requests} | {ph.failures} | "
            f"{ph.rps:.1f} | {_goodput(ph)} | {ph.samples_per_s:.1f} | {_pct(lat, 'p50')} | "
            f"{_pct(lat, 'p95')} | {_pct(lat, 'p99')} | {_ms(lat.max if lat else None)} |"
        )
    return rows


def _running(ph: PhaseResult) -> str:
    """The users actually running, where a lost worker cut them."""
    if ph.reduced_load_s < 1.0 or ph.users_running_min is None:
        return ""
    return f" (only {ph.users_running_min} for {ph.reduced_load_s:.0f} s)"


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
    procs = [*g.workers.items(), *([("master", g.master)] if g.master is not None else [])]
    for w, v in procs:
        lines.append(
            f"- {w}: CPU mean {v.cpu_mean:.0f} %, max {v.cpu_max:.0f} %, "
            f"saturated {v.saturated_fraction:.0%} of the time; event loop late (> 20 ms) "
            f"{v.loop_lagged_fraction:.1%} of its ticks, at worst {v.loop_lag_max_ms:.0f} ms"
        )
    ol = g.openloop
    if ol.scheduled:
        lines.append(
            f"- Open loop: {ol.scheduled} sends scheduled = {ol.measured} measured + {ol.dropped} dropped + "
            f"{ol.unfinished} unfinished at stop ({ol.warmup} of the measured were warm-up); "
            f"{ol.late} dispatched late; the dispatcher trailed its schedule by "
            f"≤ {ol.behind_p50_ms:g} ms at the median, ≤ {ol.behind_p99_ms:g} ms at p99, "
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


def chart_lines(rendered: list[charts.Rendered]) -> list[str]:
    """The Charts section of report.md: the PNGs in charts/ (report.html has them inline)."""
    if not rendered:
        return []
    lines = ["## Charts", ""]
    for c in rendered:
        lines += [f"![{c.title}]({c.png})", ""]
    return lines


def markdown(
    s: Summary, series: list[Point] | None = None, rendered: list[charts.Rendered] | None = None
) -> str:
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
    lines += [warmup.describe(s.warmup), ""] if s.warmup is not None else []
    lines += [
        f"Goodput over the run: {s.totals.goodput_rps:.1f} requests/s met the latency SLO "
        f"(of {s.totals.rps:.1f}/s that succeeded)",
        "",
    ]
    lines += streaming_lines(s)
    conf = confidence_table(s)
    lines += ["## Percentile confidence", "", *conf, ""] if conf else []
    sliced = slice_lines(s.slices, s.drift)
    lines += ["## Time slices", "", *sliced, ""] if sliced else []
    if s.stability:
        lines += ["## Stability windows", "", *stability_lines(s.stability)]
    lines += _capacity(s)
    lines += capacity.report_lines(s.capacity)
    lines += repeats.report_lines(s.repeats, s.comparisons)
    found = diagnose(s, series)
    lines += ["## Bottleneck analysis", "", f"**Diagnosis: {found.headline}**", ""]
    for f in found.findings:
        lines += [f"- {f.text}", *[f"    - {item}" for item in f.items]]
    lines += ["", "## Optimisation suggestions", "", *[f"- {x}" for x in found.suggestions], ""]
    lines += _generator(s)
    if s.baseline is not None:
        b = s.baseline
        lines += [f"## Against the baseline ({b.path})", ""]
        lines += [
            f"- {c.metric}: {c.actual} (limit {c.target}) — {'PASS' if c.passed else 'FAIL'}"
            for c in b.checks
        ] + [""]
    lines += chart_lines(rendered or [])
    lines += ["Files: summary.json, report.html, timeseries.jsonl, charts/", ""]
    return "\n".join(lines)


def read_series(results: Path) -> list[Point]:
    return read_points(results / "timeseries.jsonl")


def html_report(s: Summary, series: list[Point], rendered: list[charts.Rendered] | None = None) -> str:
    """report.md's text as HTML with the charts inline (drawn here, without PNGs, when not given)."""
    drawn = charts.draw(s, series, None) if rendered is None else rendered
    return page.page(f"modelsoak {s.run_id}", markdown(s, series), drawn)


def write(results: Path, summary: Summary, series: list[Point] | None = None) -> None:
    """report.md, report.html and charts/ in `results`; `series`: its time series
    when the caller has read it already."""
    if series is None:
        series = read_series(results)
    rendered = charts.draw(summary, series, results, between=lambda: gevent.sleep(0))
    (results / "report.md").write_text(markdown(summary, series, rendered))
    (results / "report.html").write_text(html_report(summary, series, rendered))


def verdict_table(s: Summary, results: Path) -> str:
    width = max([len(c.metric) for c in s.slo] + [20])
    lines = ["", f"modelsoak verdict: {s.verdict} (exit code {s.exit_code})", ""]
    lines.append(f"{'metric':<{width}}  {'target':<22} {'actual':<28} status")
    for c in s.slo:
        lines.append(f"{c.metric:<{width}}  {c.target:<22} {c.actual:<28} {'PASS' if c.passed else 'FAIL'}")
    for r in s.generator.invalid_reasons:
        lines.append(f"INVALID: {r}")
    if s.warmup is not None:
        lines.append(warmup.describe(s.warmup))
    lines += ["", f"diagnosis: {s.diagnosis}"] if s.diagnosis else []
    lines += ["", f"report: {results / 'report.md'}", f"        {results / 'report.html'}", ""]
    return "\n".join(lines)
