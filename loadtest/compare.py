"""`modelsoak compare A/summary.json B/summary.json [-o DIR]`: two runs side by
side — every headline metric with its change, the regression verdict by B's
plan (the same checks `--baseline` makes: p99 and throughput against A, or
Welch's test over the repeats when both runs have them), and overlaid charts.
compare.md, compare.html and charts/ in DIR; a summary on stdout.

Exit 0: no regression; 3: a regression; 2: an input is missing or not a summary."""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from loadtest import compare_charts, page, plotting, repeats, slo
from loadtest.codec import SchemaError
from loadtest.compare_charts import RunInput
from loadtest.plan import DEFAULTS, Plan
from loadtest.results import EXIT_PASS, EXIT_SETUP, EXIT_SLO, Check, Comparison, Latency, Summary
from loadtest.series import read_points


class CompareError(ValueError):
    """An input that is not a run's summary.json (the message names it)."""


def read_input(label: str, arg: str) -> RunInput:
    path = Path(arg)
    if path.is_dir():
        path = path / "summary.json"
    if not path.exists():
        raise CompareError(
            f"{label}: {path} does not exist; expected a run's summary.json (or the results folder holding it)"
        )
    try:
        summary = Summary.read(path)
    except SchemaError as exc:
        raise CompareError(f"{label}: {exc}") from None
    return RunInput(label, path, summary, read_points(path.parent / "timeseries.jsonl"))


def plan_of(s: Summary) -> Plan:
    """The plan the run was judged by (its summary records it), over today's defaults."""
    plan = copy.deepcopy(DEFAULTS)
    for section, values in (s.provenance.plan or {}).items():
        if section in plan and isinstance(values, dict):
            plan[section].update(values)
    return plan


def regression(a: Summary, b: Summary) -> tuple[list[Check], list[Comparison]]:
    """B against A as its baseline, as a run with --baseline A would be judged."""
    plan = plan_of(b)
    checks = slo.regression_checks(plan, b.totals, a.totals)
    comparisons = repeats.compare(plan, b.repeats, a.repeats) if a.repeats and b.repeats else []
    if comparisons:
        checks = repeats.regression_checks(plan, comparisons)
    return checks, comparisons


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, int):
        return f"{x:,} {unit}".rstrip()
    text = f"{x:.3f}" if abs(x) < 10 else f"{x:,.1f}"
    return f"{text} {unit}".rstrip()


def _delta(a: float | None, b: float | None, unit: str = "") -> tuple[str, str]:
    if a is None or b is None:
        return "n/a", "n/a"
    d = b - a
    if isinstance(a, int) and isinstance(b, int):
        return f"{d:+,}", f"{d / a:+.1%}" if a > 0 else "n/a"
    rel = f"{d / a:+.1%}" if a > 0 else "n/a"  # a change of a negative growth has no ratio
    sign = "+" if d >= 0 else "-"
    return f"{sign}{_num(abs(d), unit)}", rel


def _pct_cell(lat: Latency | None, key: str) -> str:
    if lat is None or lat.at(key) is None:
        return "n/a"
    b = lat.ci.get(key)
    if b is None or not b.enough:
        return (
            f"{_num(lat.at(key))} (too few samples for an interval)" if b is not None else _num(lat.at(key))
        )
    hi = "unbounded" if b.high is None else _num(b.high)
    return f"{_num(lat.at(key))} ({_num(b.low)} … {hi})"


def _overlap(a: Latency | None, b: Latency | None, key: str) -> str:
    ia, ib = (x.ci.get(key) if x is not None else None for x in (a, b))
    if ia is None or ib is None or not (ia.enough and ib.enough):
        return ""
    if None in (ia.low, ib.low):
        return ""
    apart = (ia.high is not None and ib.low is not None and ib.low > ia.high) or (
        ib.high is not None and ia.low is not None and ia.low > ib.high
    )
    return "intervals apart" if apart else "intervals overlap"


def _growth(s: Summary) -> float | None:
    m = s.memory
    return (m.last_bytes - m.first_bytes) / 2**20 if m.available and m.samples else None


def _leak(s: Summary) -> float | None:
    leak = s.memory.leak
    return leak.slope_bytes_per_hour / 2**20 if leak and leak.slope_bytes_per_hour is not None else None


def metric_rows(a: Summary, b: Summary) -> list[tuple[str, str, str, str, str, str]]:
    """(metric, A, B, change, relative change, note)."""
    la, lb = a.totals.latency_ms, b.totals.latency_ms
    plain: list[tuple[str, float | None, float | None, str]] = [
        ("throughput (requests/s)", a.totals.rps, b.totals.rps, ""),
        ("throughput (samples/s)", a.totals.samples_per_s, b.totals.samples_per_s, ""),
        ("goodput (requests/s)", a.totals.goodput_rps, b.totals.goodput_rps, ""),
        ("requests", a.totals.requests, b.totals.requests, ""),
        ("errors (% of requests)", 100 * a.totals.error_ratio, 100 * b.totals.error_ratio, ""),
        ("mean latency (ms)", la.mean if la else None, lb.mean if lb else None, ""),
        ("server memory growth (MiB, last - first)", _growth(a), _growth(b), ""),
        ("server memory trend (MiB/h, Theil-Sen)", _leak(a), _leak(b), ""),
        (
            "peak server memory (MiB)",
            a.memory.peak_bytes / 2**20 if a.memory.available else None,
            b.memory.peak_bytes / 2**20 if b.memory.available else None,
            "",
        ),
    ]
    rows = [(name, _num(x), _num(y), *_delta(x, y), note) for name, x, y, note in plain]
    for key in ("p50", "p95", "p99"):
        va, vb = (lat.at(key) if lat else None for lat in (la, lb))
        rows.insert(
            3 + ("p50", "p95", "p99").index(key),
            (
                f"{key} latency (ms, {_conf(la, lb)} CI)",
                _pct_cell(la, key),
                _pct_cell(lb, key),
                *_delta(va, vb),
                _overlap(la, lb, key),
            ),
        )
    return rows


def _conf(a: Latency | None, b: Latency | None) -> str:
    lat = a or b
    c = lat.confidence if lat is not None else 0.0
    return f"{c:.0%}" if c else "no"


def markdown(ra: RunInput, rb: RunInput, checks: list[Check], comparisons: list[Comparison],
             rendered: list[plotting.Rendered] | None = None) -> str:  # fmt: skip
    a, b = ra.summary, rb.summary
    failed = [c for c in checks if not c.passed]
    verdict = "REGRESSION" if failed else "NO REGRESSION"
    lines = [f"# modelsoak comparison — {a.run_id} vs {b.run_id}", "", f"**Verdict: {verdict}** (B against A as its baseline)", ""]  # fmt: skip
    lines += ["| | A (baseline) | B |", "|---|---|---|"]
    for name, fa, fb in (
        ("run", a.run_id, b.run_id),
        ("file", str(ra.path), str(rb.path)),
        ("scenario", a.scenario, b.scenario),
        ("model", f"{a.provenance.target.model} on {a.provenance.target.host}", f"{b.provenance.target.model} on {b.provenance.target.host}"),
        ("duration", f"{a.duration_s:.0f} s", f"{b.duration_s:.0f} s"),
        ("harness", f"{a.provenance.harness.version} ({a.provenance.harness.git_sha})",
         f"{b.provenance.harness.version} ({b.provenance.harness.git_sha})"),
        ("verdict of the run", a.verdict, b.verdict),
    ):  # fmt: skip
        lines.append(f"| {name} | {_cell(fa)} | {_cell(fb)} |")
    lines += [
        "",
        "## Metrics",
        "",
        "| Metric | A | B | Change | Relative | Note |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(_cell(c) for c in row)} |" for row in metric_rows(a, b)]
    lines += ["", "## Regression", ""]
    r = plan_of(b)["regression"]
    how = (
        f"Over the repeats (Welch's t-test, alpha {r['alpha']:g}): a change counts when it is significant."
        if comparisons
        else "Single runs: one number against the other (give both runs --repeat for a significance test)."
    )
    lines += [f"Thresholds from B's plan: p99 may grow at most {r['max_p99_increase']:.0%}, throughput may "
              f"fall at most {r['max_throughput_decrease']:.0%}. {how}", ""]  # fmt: skip
    if checks:
        lines += ["| Check | Measured | Limit | Actual | Status |", "|---|---|---|---|---|"]
        lines += [
            f"| {c.name} | {_cell(c.metric)} | {_cell(c.target)} | {_cell(c.actual)} | {'PASS' if c.passed else 'FAIL'} |"
            for c in checks
        ]
    else:
        lines.append("- Nothing to judge: A has no latency and no throughput to compare against.")
    lines.append("")
    if comparisons:
        lines += [
            "Every repeated metric:",
            "",
            *[f"- {c.phase}: {repeats.describe_change(c)}" for c in comparisons],
            "",
        ]
    if rendered:
        lines += ["## Charts", ""]
        for c in rendered:
            lines += [f"![{c.title}]({c.png})", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def console(ra: RunInput, rb: RunInput, checks: list[Check], out: Path) -> str:
    rows = metric_rows(ra.summary, rb.summary)
    w = max(len(r[0]) for r in rows)
    lines = ["", f"modelsoak compare: A {ra.summary.run_id} (baseline)  vs  B {rb.summary.run_id}", ""]
    lines.append(f"{'metric':<{w}}  {'A':>14} {'B':>14} {'change':>12} {'relative':>9}")
    for name, va, vb, d, rel, _note in rows:
        lines.append(f"{name:<{w}}  {va.split(' (')[0]:>14} {vb.split(' (')[0]:>14} {d:>12} {rel:>9}")
    lines.append("")
    for c in checks:
        lines.append(f"{c.name}: {c.actual} (limit {c.target}) — {'PASS' if c.passed else 'FAIL'}")
    failed = any(not c.passed for c in checks)
    lines += [
        "",
        f"verdict: {'REGRESSION' if failed else 'NO REGRESSION'} (exit code {EXIT_SLO if failed else EXIT_PASS})",
    ]
    lines += [f"report: {out / 'compare.md'}", f"        {out / 'compare.html'}", ""]
    return "\n".join(lines)


def write(ra: RunInput, rb: RunInput, out: Path) -> int:
    checks, comparisons = regression(ra.summary, rb.summary)
    out.mkdir(parents=True, exist_ok=True)
    with plotting.style():
        rendered = plotting.render(compare_charts.build(ra, rb), out)
    (out / "compare.md").write_text(markdown(ra, rb, checks, comparisons, rendered))
    body = markdown(ra, rb, checks, comparisons)
    title = f"modelsoak compare {ra.summary.run_id} vs {rb.summary.run_id}"
    (out / "compare.html").write_text(page.page(title, body, rendered))
    print(console(ra, rb, checks, out), flush=True)
    return EXIT_SLO if any(not c.passed for c in checks) else EXIT_PASS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelsoak compare",
        description="Two runs side by side: metrics and changes, the regression verdict (B against A as "
        "its baseline), overlaid charts. Exit 0: no regression, 3: regression, 2: bad input.",
    )
    p.add_argument("a", metavar="A", help="the baseline run's summary.json (or its results folder)")
    p.add_argument("b", metavar="B", help="the run to judge against it")
    p.add_argument("-o", "--output", metavar="DIR", type=Path, default=None,
                   help="where compare.md, compare.html and charts/ go (default: compare-<A>-vs-<B>)")  # fmt: skip
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)  # argparse exits 2 on a bad command line
    try:
        ra, rb = read_input("A", args.a), read_input("B", args.b)
        out = args.output or Path(f"compare-{ra.summary.run_id}-vs-{rb.summary.run_id}")
        if out.exists() and not out.is_dir():
            raise CompareError(f"-o {out}: exists and is not a folder; expected a folder for the comparison")
    except CompareError as exc:
        print(f"modelsoak compare: {exc}", file=sys.stderr)
        return EXIT_SETUP
    return write(ra, rb, out)
