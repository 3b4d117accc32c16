"""From the merged measurements to summary.json: percentiles from the merged HDR
histograms, per-phase throughput, the server breakdown, memory and its leak
verdict, the generator's own health, then the SLO verdicts and the exit code."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from exporters.leak import LeakSettings, detect_leak
from loadtest.recorder import PHASES, Merged, NameStats
from loadtest.run import RunState

EXIT_PASS, EXIT_SETUP, EXIT_SLO, EXIT_INVALID = 0, 2, 3, 4
QUANTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def latency_ms(st: NameStats) -> dict[str, float] | None:
    h = st.latency
    if not h.get_total_count():
        return None
    out = {f"p{q:g}": h.get_value_at_percentile(q) / 1000.0 for q in QUANTILES}
    out.update(
        min=h.get_min_value() / 1000.0, max=h.get_max_value() / 1000.0, mean=h.get_mean_value() / 1000.0
    )
    return out


def server_breakdown(st: NameStats) -> dict[str, Any] | None:
    if not st.server_count:
        return None
    phases = {}
    for phase in PHASES:
        hist = st.server.get(phase)
        if hist is None or not hist.get_total_count():
            continue
        phases[phase] = {
            "mean_ms": st.server_sum_ns[phase] / st.server_count / 1e6,
            "p50_ms": hist.get_value_at_percentile(50) / 1000.0,
            "p99_ms": hist.get_value_at_percentile(99) / 1000.0,
        }
    return {
        "requests": st.server_count,
        "mean_batch_size": st.batch_size_sum / st.server_count,
        "phases": phases,
    }


def phase_summary(state: RunState, merged: Merged) -> list[dict[str, Any]]:
    out = []
    for rec in state.history:
        st = merged.names.get(rec.phase.name)
        ended = rec.ended or state.extra.get("ended", rec.started)
        entry: dict[str, Any] = {
            **rec.phase.as_dict(),
            "started_s": rec.started - state.started,
            "ended_s": ended - state.started,
        }
        if st is None:
            entry.update(requests=0, failures=0)
            out.append(entry)
            continue
        ok = st.statuses.get("OK", 0)
        total = sum(st.statuses.values())
        # Throughput over the time this name was actually sending (first to last).
        span = max(st.last_s - st.first_s, 1e-9) if total > 1 else max(ended - rec.started, 1e-9)
        entry.update(
            requests=total,
            failures=total - ok,
            statuses=dict(st.statuses),
            samples=st.samples,
            rps=ok / span,
            samples_per_s=st.samples / span,
            latency_ms=latency_ms(st),
            server_breakdown=server_breakdown(st),
        )
        out.append(entry)
    return out


def memory_summary(state: RunState) -> dict[str, Any]:
    watch = state.watch
    if watch is None:
        return {"available": False, "reason": "no --server-metrics-url was given"}
    source = watch.memory_source()
    if source is None:
        why = watch.last_error or "the metrics had no memory series"
        return {"available": False, "reason": f"no memory samples from {watch.url}: {why}"}
    times, values = watch.series(source)
    soak = state.plan.get("soak", {})
    settings = LeakSettings(
        warmup_s=float(soak.get("leak_warmup_s", 300)),
        alpha=float(soak.get("leak_alpha", 0.01)),
        min_slope_bytes_per_s=float(soak.get("min_leak_bytes_per_hour", 0)) / 3600.0,
    )
    if times and times[-1] - times[0] < 4 * settings.warmup_s:
        settings.warmup_s = (times[-1] - times[0]) / 4  # a short run: keep three quarters for the trend
    leak = detect_leak(np.array(times), np.array(values), source, settings)
    return {
        "available": True,
        "source": source,
        "peak_bytes": max(values),
        "first_bytes": values[0],
        "last_bytes": values[-1],
        "samples": len(values),
        "peaks": watch.peak(),
        "leak": leak.as_dict(),
        "series": {"t": [round(t - state.started, 2) for t in times], "bytes": values},
    }


def generator_summary(state: RunState, merged: Merged) -> dict[str, Any]:
    v = state.plan["validity"]
    workers = {}
    reasons = []
    for worker, cpu in merged.cpu.items():
        saturated = cpu.saturated_fraction(v["max_cpu_percent"])
        workers[worker] = {"cpu_max": cpu.max, "cpu_mean": cpu.mean, "saturated_fraction": saturated}
        if saturated > v["max_saturated_fraction"]:
            reasons.append(
                f"load generator {worker} was CPU-saturated (>= {v['max_cpu_percent']:g} %) for "
                f"{saturated:.0%} of the run: it, not the server, limited the load"
            )
    ol = merged.openloop
    scheduled = ol.get("scheduled", 0) + ol.get("dropped", 0)
    late_fraction = ol.get("late", 0) / scheduled if scheduled else 0.0
    if late_fraction > v["max_late_fraction"]:
        reasons.append(
            f"the open-loop schedule fell behind: {late_fraction:.1%} of sends were dispatched more than "
            f"50 ms late (worst {ol.get('max_behind_us', 0) / 1000:.0f} ms)"
        )
    for worker, when in sorted(state.lost_workers.items()):
        reasons.append(f"worker {worker} was lost {when - state.started:.0f} s into the run")
    measured = sum(st.statuses.get("OK", 0) for st in merged.names.values())
    if measured == 0:
        reasons.append("no successful request was measured")
    return {
        "workers": workers,
        "lost_workers": sorted(state.lost_workers),
        "openloop": {
            "scheduled": scheduled,
            "late": ol.get("late", 0),
            "dropped": ol.get("dropped", 0),
            "late_fraction": late_fraction,
            "max_behind_ms": ol.get("max_behind_us", 0) / 1000.0,
        },
        "valid": not reasons,
        "invalid_reasons": reasons,
    }


def totals(merged: Merged, duration: float) -> dict[str, Any]:
    from loadtest.recorder import new_hist

    all_lat = new_hist()
    statuses: dict[str, int] = {}
    samples = 0
    for name, st in merged.names.items():
        if name == "warmup":
            continue
        all_lat.add(st.latency)
        samples += st.samples
        for k, n in st.statuses.items():
            statuses[k] = statuses.get(k, 0) + n
    requests = sum(statuses.values())
    failures = requests - statuses.get("OK", 0)
    return {
        "requests": requests,
        "failures": failures,
        "error_ratio": failures / requests if requests else 0.0,
        "errors_by_status": {k: n for k, n in statuses.items() if k != "OK"},
        "latency_ms": latency_ms(NameStats(latency=all_lat)),
        "rps": statuses.get("OK", 0) / duration if duration else 0.0,
        "samples_per_s": samples / duration if duration else 0.0,
    }


def load_baseline(path: Any) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--baseline {path}: not a readable summary.json ({exc})") from None
    if "totals" not in doc:
        raise ValueError(f"--baseline {path}: not a modelsoak summary.json (no 'totals')")
    return doc


def finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x
