"""SLO checks: what each scenario promises, measured against the plan's targets."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from loadtest.plan import Plan
from loadtest.recorder import UNREACHABLE, UNREACHABLE_FIRST_MS, UNREACHABLE_LAST_MS
from loadtest.results import Check, Knee, Memory, OpenLoop, PhaseResult, Stress, StressStep, Totals

# The longest back-off between a user's refused calls (loadtest.user): a last
# refusal closer than twice this to the end means the target never came back.
BACKOFF_HINT_S = 2.0


def _fmt_ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f} ms" if x < 10 else f"{x:.1f} ms"


def _by_kind(phases: list[PhaseResult], kind: str) -> list[PhaseResult]:
    return [p for p in phases if p.kind == kind]


def _lat(ph: PhaseResult | None, key: str) -> float | None:
    return ph.latency_ms.at(key) if ph is not None and ph.latency_ms is not None else None


def latency_checks(plan: Plan, phases: list[PhaseResult]) -> list[Check]:
    out = []
    for ph in _by_kind(phases, "latency"):
        for q in ("p50", "p95", "p99"):
            target = plan["latency"].get(f"{q}_ms")
            if target is None:
                continue
            actual = _lat(ph, q)
            out.append(
                Check(
                    f"latency {q}",
                    f"{q} latency, batch {ph.batch_size}, warm-up excluded",
                    f"< {target:g} ms",
                    _fmt_ms(actual),
                    actual is not None and actual < target,
                )
            )
    return out


def throughput_checks(plan: Plan, phases: list[PhaseResult]) -> list[Check]:
    target = plan["throughput"]["min_samples_per_s"]
    return [
        Check(
            f"throughput bs={ph.batch_size}",
            f"samples/s at batch {ph.batch_size} ({ph.users} users)",
            f">= {target:g}/s",
            f"{ph.samples_per_s:.1f}/s",
            ph.samples_per_s >= target,
        )
        for ph in _by_kind(phases, "throughput")
    ]


def batch_checks(plan: Plan, phases: list[PhaseResult]) -> list[Check]:
    p = plan["batch"]
    q = float(p["percentile"])
    key = f"p{q:g}" if q != 100 else "max"
    out = []
    for ph in _by_kind(phases, "batch"):
        actual = _lat(ph, key)
        out.append(
            Check(
                f"batch {ph.batch_size} latency",
                f"{key} latency of a batch of {ph.batch_size}",
                f"< {p['max_latency_ms']:g} ms",
                _fmt_ms(actual),
                actual is not None and actual < p["max_latency_ms"],
            )
        )
    return out


def memory_checks(plan: Plan, scenario_kinds: set[str], memory: Memory) -> list[Check]:
    out = []
    if "memory" in scenario_kinds:
        limit = plan["memory"]["max_peak_bytes"]
        if memory.available:
            peak = memory.peak_bytes
            out.append(
                Check(
                    "peak memory",
                    f"server peak ({memory.source})",
                    f"< {limit / 1e9:.2f} GB",
                    f"{peak / 1e9:.3f} GB",
                    peak < limit,
                )
            )
        else:
            out.append(
                Check("peak memory", "server peak", f"< {limit / 1e9:.2f} GB", "n/a", False, memory.reason)
            )
    if "soak" in scenario_kinds:
        soak = plan["soak"]
        if memory.available and memory.leak is not None:
            leak = memory.leak
            slope = leak.slope_bytes_per_hour
            out.append(
                Check(
                    "memory leak",
                    f"trend of {memory.source} (Theil-Sen, Mann-Kendall)",
                    "no significant growth",
                    "n/a" if slope is None else f"{slope / 2**20:+.2f} MiB/h",
                    not leak.suspected,
                    leak.reason,
                )
            )
            if soak.get("max_memory_bytes"):
                limit = soak["max_memory_bytes"]
                out.append(
                    Check(
                        "memory ceiling",
                        f"server peak ({memory.source})",
                        f"< {limit / 1e9:.2f} GB",
                        f"{memory.peak_bytes / 1e9:.3f} GB",
                        memory.peak_bytes < limit,
                    )
                )
        else:
            out.append(
                Check(
                    "memory leak",
                    "server memory trend",
                    "no significant growth",
                    "n/a",
                    False,
                    memory.reason,
                )
            )
    return out


def soak_latency_checks(plan: Plan, phases: list[PhaseResult]) -> list[Check]:
    target = plan["soak"].get("p99_ms")
    if target is None:
        return []
    out = []
    for ph in _by_kind(phases, "soak"):
        actual = _lat(ph, "p99")
        out.append(
            Check(
                "soak p99",
                "p99 latency over the soak",
                f"< {target:g} ms",
                _fmt_ms(actual),
                actual is not None and actual < target,
            )
        )
    return out


def concurrency_checks(plan: Plan, phases: list[PhaseResult]) -> list[Check]:
    p = plan["concurrency"]
    want = p["users"] * p["requests_per_user"]
    out = []
    for ph in _by_kind(phases, "concurrency"):
        ok = ph.requests - ph.failures
        out.append(
            Check(
                "concurrency",
                f"{p['users']} concurrent clients x {p['requests_per_user']} requests",
                f"{want} of {want} succeed",
                f"{ok} of {ph.requests} succeeded",
                ok >= want and ph.failures == 0,
            )
        )
    return out


def stress_analysis(plan: Plan, phases: list[PhaseResult]) -> Stress:
    """Which steps held the SLO, the highest that did, and where latency bends."""
    p = plan["stress"]
    steps = []
    for ph in _by_kind(phases, "stress"):
        p99 = _lat(ph, "p99")
        err = ph.failures / ph.requests if ph.requests else 1.0
        held = bool(ph.requests) and p99 is not None and p99 < p["p99_ms"] and err <= p["max_error_ratio"]
        load = ph.rate if ph.rate else float(ph.users)
        steps.append(StressStep(ph.name, load, held, p99, ph.samples_per_s, err))
    held_steps = [s for s in steps if s.held]
    knee = None
    for prev, cur in itertools.pairwise(steps):
        if prev.samples_per_s <= 0:
            continue
        load_gain = cur.load / prev.load - 1
        tput_gain = cur.samples_per_s / prev.samples_per_s - 1
        if load_gain > 0 and tput_gain < 0.5 * load_gain:
            knee = Knee(prev.name, prev.load, prev.samples_per_s, prev.p99_ms)
            break
    return Stress(steps, held_steps[-1] if held_steps else None, knee)


def stress_checks(plan: Plan, stress: Stress) -> list[Check]:
    if not stress.steps:
        return []
    best = stress.highest_held
    return [
        Check(
            "capacity",
            f"highest load with p99 < {plan['stress']['p99_ms']:g} ms and errors <= "
            f"{plan['stress']['max_error_ratio']:.0%}",
            "at least the first step holds",
            best.name if best else "no step held",
            best is not None,
        )
    ]


def spike_checks(plan: Plan, phases: list[PhaseResult]) -> list[Check]:
    p = plan["spike"]
    by = {ph.name: ph for ph in phases if ph.kind == "spike"}
    out = []
    before = _lat(by.get("spike:before"), "p99")
    peak = _lat(by.get("spike:peak"), "p99")
    after = _lat(by.get("spike:after"), "p99")
    if p.get("p99_ms") is not None and by:
        out.append(
            Check(
                "spike p99",
                "p99 during the spike",
                f"< {p['p99_ms']:g} ms",
                _fmt_ms(peak),
                peak is not None and peak < p["p99_ms"],
            )
        )
    if before is not None and "spike:after" in by:
        limit = before * p["recovery_factor"]
        out.append(
            Check(
                "spike recovery",
                "p99 after the spike vs before",
                f"< {p['recovery_factor']:g} x {before:.1f} ms",
                _fmt_ms(after),
                after is not None and after < limit,
            )
        )
    return out


def error_checks(plan: Plan, totals: Totals, openloop: OpenLoop) -> list[Check]:
    e = plan["errors"]
    out = [
        Check(
            "errors",
            "failed requests / requests",
            f"<= {e['max_error_ratio']:.2%}",
            f"{totals.error_ratio:.2%} ({totals.failures} of {totals.requests})",
            totals.error_ratio <= e["max_error_ratio"],
            ", ".join(f"{k}: {n}" for k, n in totals.errors_by_status.items()),
        )
    ]
    if openloop.scheduled:
        # Unfinished sends were never answered: they count as dropped here (and
        # as failed requests in the error ratio).
        lost = openloop.dropped + openloop.unfinished
        ratio = lost / openloop.scheduled
        out.append(
            Check(
                "dropped sends",
                "open-loop sends dropped or unfinished at stop / scheduled",
                f"<= {e['max_dropped_ratio']:.2%}",
                f"{ratio:.2%} ({openloop.dropped} dropped, {openloop.unfinished} unfinished "
                f"of {openloop.scheduled})",
                ratio <= e["max_dropped_ratio"],
            )
        )
    return out


def sustained_checks(plan: Plan, openloop: OpenLoop) -> list[Check]:
    """A server that answers fewer sends per second than were offered is
    overloaded, whatever the other numbers say."""
    if not openloop.scheduled or openloop.offered_rps <= 0:
        return []
    need = plan["errors"]["min_sustained_ratio"]
    sustained, offered = openloop.sustained_rps, openloop.offered_rps
    return [
        Check(
            "sustained rate",
            "open-loop successful answers/s vs offered sends/s",
            f">= {need:.0%} of offered",
            f"sustained {sustained:.0f}/s of {offered:.0f}/s offered",
            sustained >= need * offered,
            f"{openloop.unfinished} unfinished at stop, {openloop.dropped} dropped",
        )
    ]


def regression_checks(plan: Plan, totals: Totals, baseline: Totals) -> list[Check]:
    r = plan["regression"]
    out = []
    b_lat = baseline.latency_ms.p99 if baseline.latency_ms else None
    a_lat = totals.latency_ms.p99 if totals.latency_ms else None
    if b_lat and a_lat is not None:
        change = a_lat / b_lat - 1
        out.append(
            Check(
                "regression p99",
                f"p99 vs baseline {b_lat:.3f} ms",
                f"<= +{r['max_p99_increase']:.0%}",
                f"{change:+.1%}",
                change <= r["max_p99_increase"],
            )
        )
    b_tp = baseline.samples_per_s
    a_tp = totals.samples_per_s
    if b_tp:
        change = a_tp / b_tp - 1
        out.append(
            Check(
                "regression throughput",
                f"samples/s vs baseline {b_tp:.1f}/s",
                f">= -{r['max_throughput_decrease']:.0%}",
                f"{change:+.1%}",
                change >= -r["max_throughput_decrease"],
            )
        )
    return out


# The thresholds of a plan, by the scenario that judges them. Sections not listed
# (errors, validity) are judged in every run; regression needs --baseline.
THRESHOLDS: dict[str, tuple[str, ...]] = {
    "latency": ("p50_ms", "p95_ms", "p99_ms"),
    "throughput": ("min_samples_per_s",),
    "batch": ("max_latency_ms",),
    "memory": ("max_peak_bytes",),
    "soak": ("p99_ms", "max_memory_bytes"),
    "stress": ("p99_ms", "max_error_ratio"),
    "spike": ("p99_ms", "recovery_factor"),
    "capacity": ("latency_ms", "max_error_ratio", "min_capacity"),
    "streaming": ("ttft_p99_ms", "tpot_p99_ms", "itl_p99_ms", "ttft_ms", "tpot_ms", "e2e_ms"),
}
# A capacity search judges its own steps: of the other sections only these apply.
CAPACITY_JUDGES = ("capacity.", "errors.min_sustained_ratio", "validity.", "streaming.")
_THRESHOLD_NAMES = {f"{section}.{key}" for section, keys in THRESHOLDS.items() for key in keys} | {
    "errors.max_error_ratio",
    "errors.max_dropped_ratio",
}
# A plain run (--scenario none) judges these sections on its own phases.
PLAIN_SECTIONS = ("latency", "throughput", "streaming")


def unjudgeable(
    explicit: set[str], scenario: str, has_metrics: bool, has_baseline: bool, streaming: bool = True
) -> list[str]:
    """The thresholds the SLO file sets that this run could not judge, each with
    why and what would judge it (the run is refused before it starts)."""
    out = []
    if not streaming:
        out += [f"{name} is judged only on streamed requests: give --protocol openai or kserve-stream"
                for name in sorted(explicit) if name.startswith("streaming.")]  # fmt: skip
    for section, keys in THRESHOLDS.items():
        for key in keys:
            name = f"{section}.{key}"
            if name not in explicit:
                continue
            if scenario == "none" and section not in PLAIN_SECTIONS:
                out.append(
                    f"{name} is judged only by --scenario {section}, not by a plain run (--scenario none)"
                )
            elif section == "capacity" and scenario != "capacity":
                out.append(f"{name} is judged only by --scenario capacity, not by --scenario {scenario}")
            elif key in ("max_peak_bytes", "max_memory_bytes") and not has_metrics:
                out.append(f"{name} needs the server's memory: give --server-metrics-url")
    if scenario == "capacity":
        out += [
            f"{name} is not judged by a capacity search (its steps are judged on capacity.latency_ms, "
            "capacity.max_error_ratio and errors.min_sustained_ratio)"
            for name in sorted(explicit)
            if name in _THRESHOLD_NAMES and not name.startswith(CAPACITY_JUDGES)
        ]
    if not has_baseline:
        out += [
            f"{name} needs --baseline (a summary.json to compare with)"
            for name in sorted(explicit)
            if name.startswith("regression.")
        ]
    return out


def plain_checks(plan: Plan, explicit: set[str], phases: list[PhaseResult]) -> list[Check]:
    """A plain run's phases judged on the latency and throughput thresholds the
    SLO file sets (the defaults belong to the template's scenarios)."""
    out = []
    for ph in _by_kind(phases, "none"):
        for q in ("p50", "p95", "p99"):
            target = plan["latency"][f"{q}_ms"]
            if f"latency.{q}_ms" not in explicit or target is None:
                continue
            actual = _lat(ph, q)
            out.append(
                Check(
                    f"latency {q}",
                    f"{q} latency of {ph.name}, warm-up excluded",
                    f"< {target:g} ms",
                    _fmt_ms(actual),
                    actual is not None and actual < target,
                )
            )
        if "throughput.min_samples_per_s" in explicit:
            target = plan["throughput"]["min_samples_per_s"]
            out.append(
                Check(
                    f"throughput {ph.name}",
                    f"samples/s of {ph.name} ({ph.users} users)",
                    f">= {target:g}/s",
                    f"{ph.samples_per_s:.1f}/s",
                    ph.samples_per_s >= target,
                )
            )
    return out


def reachability_checks(openloop: Mapping[str, int], started: float, ended: float) -> list[Check]:
    """A failed check when some calls found the target unreachable (refused,
    reset): from when, for how long, how many."""
    n = openloop.get(UNREACHABLE, 0)
    if not n:
        return []
    first = openloop.get(UNREACHABLE_FIRST_MS, 0) / 1000.0
    last = openloop.get(UNREACHABLE_LAST_MS, 0) / 1000.0
    # Unreachable until the end when the last refusal came in the run's final seconds.
    until = ended if ended - last < 2 * BACKOFF_HINT_S else last
    return [
        Check(
            "target reachable",
            "calls the target did not take (connection refused or reset)",
            "none",
            f"target unreachable from t={first - started:.1f} s for {max(until - first, 0.0):.1f} s, "
            f"{n} requests failed",
            False,
        )
    ]


# Streamed requests' SLOs (plan section "streaming"): key -> (what, the Streaming field).
STREAM_SLOS = {"ttft_p99_ms": ("p99 time to first token", "ttft_ms"), "tpot_p99_ms": ("p99 time per output token", "tpot_ms"),
               "itl_p99_ms": ("p99 inter-token latency", "itl_ms")}  # fmt: skip


def streaming_checks(plan: Plan, phases: list[PhaseResult]) -> list[Check]:
    """Every measured phase that streamed, judged on the streaming p99 limits the plan sets."""
    out = []
    for ph in phases:
        if ph.kind in ("warmup", "capacity", "pause") or ph.streaming is None:
            continue  # a capacity search's steps are judged by the search (loadtest.capacity)
        for key, (what, attr) in STREAM_SLOS.items():
            target = plan["streaming"].get(key)
            if target is None:
                continue
            lat = getattr(ph.streaming, attr)
            actual = lat.at("p99") if lat is not None else None
            out.append(Check(f"{attr[:-3]} p99 {ph.name}", f"{what} of {ph.name}", f"< {target:g} ms",
                             _fmt_ms(actual), actual is not None and actual < target))  # fmt: skip
    return out
