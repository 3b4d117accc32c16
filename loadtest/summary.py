"""From the merged measurements to the typed results: percentiles from the
merged HDR histograms, per-phase throughput, the server breakdown, memory and
its leak verdict, and the generator's own health (loadtest.results)."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
from hdrh.histogram import HdrHistogram

from loadtest import trust
from loadtest.openloop import LATE_AFTER_S
from loadtest.plan import Plan, good_limits
from loadtest.recorder import (
    LAG_BOUNDS_US,
    LAG_OVER,
    LAG_PREFIX,
    LOOP_LAGGED_S,
    LOOP_MIN_TICKS,
    STREAM_KEYS,
    UNFINISHED,
    UNFINISHED_MIN_US,
    UNREACHABLE,
    UNREACHABLE_FIRST_MS,
    UNREACHABLE_LAST_MS,
    Merged,
    NameStats,
    drop,
    new_hist,
)
from loadtest.results import (
    Event,
    Generator,
    Latency,
    Leak,
    Memory,
    MemorySeries,
    OpenLoop,
    PhaseBreakdown,
    PhaseResult,
    Stage,
    Streaming,
    Totals,
    WorkerCpu,
)
from loadtest.stats import CONFIDENCE
from server.leak import LeakSettings, LeakVerdict, detect_leak
from server.stats import PHASES

if TYPE_CHECKING:
    from collections.abc import Mapping

    from loadtest.run import PhaseRecord, Run
    from loadtest.series import Point
    from loadtest.server_watch import ServerWatch


def lag_percentile(openloop: Mapping[str, int], q: float) -> float:
    """The open-loop schedule's lag at quantile `q` (ms), as the upper bound of
    the bucket it falls in; the worst lag when it falls over the last bound."""
    counts = [(b, openloop.get(f"{LAG_PREFIX}{b}", 0)) for b in LAG_BOUNDS_US]
    total = sum(n for _, n in counts) + openloop.get(LAG_OVER, 0)
    if not total:
        return 0.0
    seen = 0
    for bound, n in counts:
        seen += n
        if seen >= q * total:
            return bound / 1000.0
    return openloop.get("max_behind_us", 0) / 1000.0

def latency_ms(st: NameStats, confidence: float = CONFIDENCE) -> Latency | None:
    h = st.latency
    if not h.get_total_count():
        return None

    def at(q: float) -> float:
        return float(h.get_value_at_percentile(q)) / 1000.0

    return Latency(
        p50=at(50.0),
        p90=at(90.0),
        p95=at(95.0),
        p99=at(99.0),
        p99_9=at(99.9),
        min=h.get_min_value() / 1000.0,
        max=h.get_max_value() / 1000.0,
        mean=h.get_mean_value() / 1000.0,
        count=int(h.get_total_count()),
        confidence=confidence,
        ci=trust.bounds(h, confidence),
        distribution=distribution(h),
    )


def distribution(h: HdrHistogram, per_decade: int = 10) -> list[list[float]]:
    """[percentile, ms] pairs from p0 to the maximum, `per_decade` steps per tenfold
    of 1/(1 - q), stopping where fewer than one sample lies beyond the step."""
    n = int(h.get_total_count())
    out: list[list[float]] = []
    step = 0
    while n and 10 ** (step / per_decade) < n:
        q = 100.0 * (1.0 - 10 ** (-step / per_decade))
        out.append([round(q, 6), float(h.get_value_at_percentile(q)) / 1000.0])
        step += 1
    if n:
        out.append([100.0, float(h.get_max_value()) / 1000.0])
    return out


def mark_lower_bounds(lat: Latency | None, unfinished: int, low_us: int) -> None:
    """Name the percentiles an unfinished send's wait (at least `low_us`) may sit
    below: their true value can only be higher."""
    if lat is None or not unfinished:
        return
    low_ms = low_us / 1000.0
    keys = ("p50", "p90", "p95", "p99", "p99.9", "max")
    lat.lower_bounds = [k for k in keys if (v := lat.at(k)) is not None and v >= low_ms]


def server_breakdown(st: NameStats) -> PhaseBreakdown | None:
    if not st.server_count:
        return None
    stages = {}
    for phase in PHASES:
        hist = st.server.get(phase)
        if hist is None or not hist.get_total_count():
            continue
        stages[phase] = Stage(
            mean_ms=st.server_sum_ns[phase] / st.server_count / 1e6,
            p50_ms=hist.get_value_at_percentile(50) / 1000.0,
            p99_ms=hist.get_value_at_percentile(99) / 1000.0,
        )
    return PhaseBreakdown(st.server_count, st.batch_size_sum / st.server_count, stages)


def reduced_load(samples: list[tuple[float, int]], intended: int) -> tuple[int | None, float]:
    """From the users running every second: the fewest once the phase first had
    all `intended` (its spawn ramp apart), and the seconds it ran with fewer."""
    full = next((i for i, (_, n) in enumerate(samples) if n >= intended), None)
    if full is None:
        return (min(n for _, n in samples) if samples else None), 0.0
    after = samples[full:]
    short = sum(b[0] - a[0] for a, b in itertools.pairwise(after) if a[1] < intended)
    return min(n for _, n in after), short


def reduced_load_reasons(phases: list[PhaseResult], rebalance: bool) -> list[str]:
    """What a lost worker did to the load the SLOs were judged on."""
    hit = [p for p in phases if p.reduced_load_s >= 1.0 and p.users_running_min is not None]
    if not hit:
        return []
    parts = ", ".join(f"{p.name} ran with {p.users_running_min} of {p.users} users for {p.reduced_load_s:.0f} s"
                      for p in hit)  # fmt: skip
    how = ("its users were moved to the survivors (rebalancing)" if rebalance
           else "its users were not moved (--no-rebalance)")  # fmt: skip
    return [f"reduced load after a lost worker: {parts}; {how}: those phases' SLOs were judged on "
            "less than the intended load"]  # fmt: skip


def _latency(hist_key: str, st: NameStats, confidence: float) -> Latency | None:
    hist = st.server.get(STREAM_KEYS[hist_key])
    return latency_ms(NameStats(latency=hist), confidence) if hist is not None else None


def _source(tokens: Counter[str]) -> str:
    streams, usage = tokens.get("streams", 0), tokens.get("from_usage", 0)
    return "usage" if usage == streams else "counted" if usage == 0 else "mixed"


def _split(tokens: Counter[str]) -> dict[str, float]:
    n = tokens.get("server_streams", 0)
    if not n:
        return {}
    return {part: tokens.get(f"server_{part}_ns", 0) / n / 1e6 for part in ("queue", "prefill", "ttft", "decode")}


def streaming_result(
    st: NameStats, span_s: float, limits: dict[str, float], confidence: float = CONFIDENCE
) -> Streaming | None:
    """One request name's streams over `span_s` seconds of sending; None when none streamed."""
    t = st.tokens
    if not t.get("streams"):
        return None
    span = max(span_s, 1e-9)
    return Streaming(
        streams=t["streams"],
        ttft_ms=_latency("ttft", st, confidence),
        itl_ms=_latency("itl", st, confidence),
        tpot_ms=_latency("tpot", st, confidence),
        prompt_tokens=t.get("prompt", 0),
        output_tokens=t.get("output", 0),
        output_tokens_per_s=t.get("output", 0) / span,
        tokens_source=_source(t),
        good_streams=t.get("good", 0),
        goodput_rps=t.get("good", 0) / span,
        good_limits_ms=dict(limits),
        server_split_ms=_split(t),
        itl_added_ms=_latency("itl_added", st, confidence),
    )


def streaming_total(
    names: dict[str, NameStats], duration_s: float, limits: dict[str, float], confidence: float = CONFIDENCE
) -> Streaming | None:
    """Every measured name's streams together (warm-up apart)."""
    merged = NameStats(name="total")
    for name, st in names.items():
        if name == "warmup" or not st.tokens.get("streams"):
            continue
        merged.tokens.update(st.tokens)
        for key in STREAM_KEYS.values():
            if key in st.server:
                if key not in merged.server:
                    merged.server[key] = new_hist()
                merged.server[key].add(st.server[key])
    try:
        return streaming_result(merged, duration_s, limits, confidence)
    finally:
        drop(*merged.server.values(), merged.latency)


def phase_summary(run: Run, merged: Merged, records: list[PhaseRecord] | None = None) -> list[PhaseResult]:
    """Each phase of the run's history (or of `records`) with what it measured."""
    out = []
    for rec in run.history if records is None else records:
        ph = rec.phase
        st = merged.names.get(ph.name)
        ended = rec.ended or run.ended or rec.started
        entry = PhaseResult(
            name=ph.name,
            kind=ph.kind,
            users=ph.users,
            duration_s=ph.duration_s,
            batch_size=ph.batch_size,
            rate=ph.rate,
            requests_per_user=ph.requests_per_user,
            spawn_rate=ph.spawn_rate,
            started_s=rec.started - run.started,
            ended_s=ended - run.started,
        )
        out.append(entry)
        entry.users_running_min, entry.reduced_load_s = reduced_load(rec.users_running, ph.users)
        if st is None:
            continue
        ok = st.statuses.get("OK", 0)
        total = sum(st.statuses.values())
        # Throughput over the time this name was actually sending (first to last).
        span = max(st.last_s - st.first_s, 1e-9) if total > 1 else max(ended - rec.started, 1e-9)
        entry.requests = total
        entry.failures = total - ok
        entry.statuses = dict(st.statuses)
        entry.samples = st.samples
        entry.rps = ok / span
        entry.samples_per_s = st.samples / span
        entry.latency_ms = latency_ms(st, run.plan["validity"]["percentile_confidence"])
        low_us = merged.openloop.get(UNFINISHED_MIN_US, 0)
        mark_lower_bounds(entry.latency_ms, st.statuses.get(UNFINISHED, 0), low_us)
        entry.goodput_latency_ms = trust.goodput_threshold_ms(run.plan, ph.kind)
        entry.good_requests = trust.good_count(st.latency, entry.goodput_latency_ms)
        entry.goodput_rps = entry.good_requests / span
        entry.server_breakdown = server_breakdown(st)
        if st.client_count:
            entry.client_split_ms = {
                k: st.client_sum_ns[k] / st.client_count / 1e6 for k in ("send_wait", "call")
            }
        entry.streaming = streaming_result(
            st, span, good_limits(run.plan), run.plan["validity"]["percentile_confidence"]
        )
    return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def leak_result(v: LeakVerdict) -> Leak:
    return Leak(
        source=v.source,
        suspected=v.suspected,
        slope_bytes_per_s=_finite(v.slope_bytes_per_s),
        slope_low_bytes_per_s=_finite(v.slope_low_bytes_per_s),
        slope_high_bytes_per_s=_finite(v.slope_high_bytes_per_s),
        tau=_finite(v.tau),
        p_value=_finite(v.p_value),
        samples=v.samples,
        window_s=_finite(v.window_s),
        reason=v.reason,
        slope_bytes_per_hour=_finite(v.slope_bytes_per_hour),
    )


def memory_summary(watch: ServerWatch | None, plan: Plan, started: float) -> Memory:
    if watch is None:
        return Memory(
            False, "no --server-metrics-url was given, and the server did not say where its metrics are"
        )
    source = watch.memory_source()
    if source is None:
        why = watch.last_error or "the metrics had no memory series"
        return Memory(False, f"no memory samples from {watch.url}: {why}")
    times, values = watch.series(source)
    soak = plan.get("soak", {})
    settings = LeakSettings(
        warmup_s=float(soak.get("leak_warmup_s", 300)),
        alpha=float(soak.get("leak_alpha", 0.01)),
        min_slope_bytes_per_s=float(soak.get("min_leak_bytes_per_hour", 0)) / 3600.0,
    )
    if times and times[-1] - times[0] < 4 * settings.warmup_s:
        settings.warmup_s = (times[-1] - times[0]) / 4  # a short run: keep three quarters for the trend
    leak = detect_leak(np.array(times), np.array(values), source, settings)
    return Memory(
        available=True,
        source=source,
        peak_bytes=max(values),
        first_bytes=values[0],
        last_bytes=values[-1],
        samples=len(values),
        peaks=watch.peak(),
        leak=leak_result(leak),
        series=MemorySeries([round(t - started, 2) for t in times], list(values)),
    )


def generator_summary(
    plan: Plan, merged: Merged, lost_workers: dict[str, float], started: float
) -> Generator:
    v = plan["validity"]
    workers = {}
    reasons = []
    for worker, cpu in merged.cpu.items():
        saturated = cpu.saturated_fraction(v["max_cpu_percent"])
        workers[worker] = WorkerCpu(cpu.max, cpu.mean, saturated, cpu.lagged_fraction, cpu.lag_max_s * 1000.0)
        if saturated > v["max_saturated_fraction"]:
            reasons.append(
                f"load generator {worker} was CPU-saturated (>= {v['max_cpu_percent']:g} %) for "
                f"{saturated:.0%} of the run: it, not the server, limited the load"
            )
        elif cpu.ticks >= LOOP_MIN_TICKS and cpu.lagged_fraction > v["max_lagged_fraction"]:
            reasons.append(
                f"load generator {worker} was short of CPU: {cpu.lagged_fraction:.0%} of its event-loop ticks "
                f"woke more than {LOOP_LAGGED_S * 1000:.0f} ms late (worst {cpu.lag_max_s * 1000:.0f} ms) at "
                f"{cpu.mean:.0f} % CPU: it, not the server, limited the load, and its latencies include its delays"
            )
    ol = merged.openloop
    scheduled = ol.get("scheduled", 0) + ol.get("dropped", 0)
    accounted = scheduled == ol.get("measured", 0) + ol.get("dropped", 0) + ol.get("unfinished", 0)
    if not accounted:
        reasons.append(
            f"open-loop accounting does not add up: {scheduled} scheduled, {ol.get('measured', 0)} measured, "
            f"{ol.get('dropped', 0)} dropped, {ol.get('unfinished', 0)} unfinished"
        )
    late_fraction = ol.get("late", 0) / scheduled if scheduled else 0.0
    if late_fraction > v["max_late_fraction"]:
        reasons.append(
            f"the open-loop schedule fell behind: {late_fraction:.1%} of sends were dispatched more than "
            f"{LATE_AFTER_S * 1000:.0f} ms late (worst {ol.get('max_behind_us', 0) / 1000:.0f} ms)"
        )
    for worker, when in sorted(lost_workers.items()):
        reasons.append(f"worker {worker} was lost {when - started:.0f} s into the run")
    measured = sum(st.statuses.get("OK", 0) for st in merged.names.values())
    if measured == 0:
        reasons.append("no successful request was measured")
    openloop = OpenLoop(
        scheduled=scheduled,
        late=ol.get("late", 0),
        dropped=ol.get("dropped", 0),
        late_fraction=late_fraction,
        max_behind_ms=ol.get("max_behind_us", 0) / 1000.0,
        measured=ol.get("measured", 0),
        unfinished=ol.get("unfinished", 0),
        warmup=ol.get("warmup", 0),
        accounted=accounted,
        behind_p50_ms=lag_percentile(ol, 0.50),
        behind_p99_ms=lag_percentile(ol, 0.99),
    )
    return Generator(workers, sorted(lost_workers), openloop, not reasons, reasons)


def totals(merged: Merged, duration: float, confidence: float = CONFIDENCE) -> Totals:
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
    latency = latency_ms(NameStats(latency=all_lat), confidence)
    mark_lower_bounds(latency, statuses.get(UNFINISHED, 0), merged.openloop.get(UNFINISHED_MIN_US, 0))
    drop(all_lat)
    return Totals(
        requests=requests,
        failures=failures,
        error_ratio=failures / requests if requests else 0.0,
        errors_by_status={k: n for k, n in statuses.items() if k != "OK"},
        latency_ms=latency,
        rps=statuses.get("OK", 0) / duration if duration else 0.0,
        samples_per_s=samples / duration if duration else 0.0,
    )


def run_events(
    run: Run, phases: list[PhaseResult], openloop: Mapping[str, int], series: list[Point]
) -> list[Event]:
    """The run's events in time order: phases begun, workers lost, the target
    unreachable, and where a phase's p99 target was first broken (by the series)."""
    out = [Event(round(p.started_s, 3), "phase", p.name) for p in phases]
    out += [Event(round(t - run.started, 3), "worker_lost", w) for w, t in sorted(run.lost_workers.items())]
    first = openloop.get(UNREACHABLE_FIRST_MS, 0) / 1000.0
    if openloop.get(UNREACHABLE, 0) and first:
        last = openloop.get(UNREACHABLE_LAST_MS, 0) / 1000.0
        out.append(Event(round(first - run.started, 3), "unreachable",
                         f"{openloop[UNREACHABLE]} calls refused or reset", round(max(last - first, 0.0), 3)))  # fmt: skip
    limits = {p.name: trust.goodput_threshold_ms(run.plan, p.kind) for p in phases if p.kind != "warmup"}
    broken: set[str] = set()
    for pt in series:
        limit = limits.get(pt.phase)
        if limit is not None and pt.p99_ms is not None and pt.p99_ms > limit and pt.phase not in broken:
            broken.add(pt.phase)
            out.append(Event(pt.t, "slo_broken", f"{pt.phase}: p99 {pt.p99_ms:.1f} ms over {limit:g} ms"))
    return sorted(out, key=lambda e: e.t_s)
