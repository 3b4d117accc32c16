"""How far a run's numbers can be trusted: each percentile's confidence interval
and sample count, which SLO percentiles have too few samples to be judged
(such a run is INVALID), and goodput (requests/s that met the latency SLO)."""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

from loadtest.plan import Plan
from loadtest.results import Bound, PhaseResult, Totals
from loadtest.stats import count_at_or_below, percentile_interval

# The percentiles a Latency reports, by the plan's names, as quantiles.
QUANTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}


def bounds(hist: HdrHistogram, confidence: float) -> dict[str, Bound]:
    """Every reported percentile's interval, in ms (the histogram holds µs)."""
    out = {}
    for key, q in QUANTILES.items():
        iv = percentile_interval(hist, q, confidence, scale=1000.0)
        out[key] = Bound(iv.n, iv.needed, iv.low, iv.high, iv.enough)
    return out


def goodput_threshold_ms(plan: Plan, kind: str) -> float | None:
    """The latency a request must meet to count as good in a phase of `kind`:
    the plan's goodput.latency_ms, else that kind's own p99 (or batch) target,
    else the latency scenario's p99."""
    fixed = plan.get("goodput", {}).get("latency_ms")
    if fixed is not None:
        return float(fixed)
    own = {
        "stress": plan["stress"]["p99_ms"],
        "soak": plan["soak"].get("p99_ms"),
        "spike": plan["spike"].get("p99_ms"),
        "batch": plan["batch"]["max_latency_ms"],
        "capacity": plan["capacity"]["latency_ms"],
    }.get(kind)
    value = own if own is not None else plan["latency"].get("p99_ms")
    return None if value is None else float(value)


def good_count(hist: HdrHistogram, threshold_ms: float | None) -> int:
    """Successful requests at or below the threshold (all of them when there is none)."""
    if threshold_ms is None:
        return int(hist.get_total_count())
    return count_at_or_below(hist, threshold_ms * 1000.0)


def total_goodput(totals: Totals, phases: list[PhaseResult], duration_s: float) -> None:
    totals.goodput_rps = sum(p.good_requests for p in phases if p.kind != "warmup") / duration_s


def _slo_percentiles(plan: Plan, ph: PhaseResult) -> dict[str, float | None]:
    """The percentiles of this phase an SLO check reads (loadtest.slo), each with
    the fixed limit it is held to (None where the limit is relative)."""
    if ph.kind == "latency":
        return {
            q: float(v) for q in ("p50", "p95", "p99") if (v := plan["latency"].get(f"{q}_ms")) is not None
        }
    if ph.kind == "batch":
        q = float(plan["batch"]["percentile"])
        return {f"p{q:g}": float(plan["batch"]["max_latency_ms"])} if q != 100 else {}
    if ph.kind == "soak":
        limit = plan["soak"].get("p99_ms")
        return {"p99": float(limit)} if limit is not None else {}
    # Stress steps are not listed: a step's p99 is the search's signal (held or broke), and
    # a short step of a slow model cannot reach 662 samples; the report shows each step's count.
    if ph.kind == "spike":
        limit = plan["spike"].get("p99_ms")
        if ph.name == "spike:peak" and limit is not None:
            return {"p99": float(limit)}
        return {"p99": None} if ph.name in ("spike:before", "spike:after") else {}
    return {}


def _failure_established(bound: Bound, limit: float | None) -> bool:
    """The percentile's lower confidence bound is already over its limit: the SLO
    fails at the chosen confidence, however few the samples (a pass needs the
    upper bound, hence the full count)."""
    return limit is not None and bound.low is not None and bound.low >= limit


def _short(key: str, bound: Bound) -> str:
    return f"{key} not enough samples ({bound.n} of {bound.needed})"


def undersampled(plan: Plan, phases: list[PhaseResult], totals: Totals, regression: bool) -> list[str]:
    """Why the run is INVALID: an SLO rests on a percentile with too few samples."""
    confidence = plan["validity"]["percentile_confidence"]
    reasons = []
    judged = [(ph.name, ph.latency_ms, _slo_percentiles(plan, ph)) for ph in phases]
    for ph in phases:  # streamed requests' SLOs (plan section "streaming")
        if ph.streaming is not None and ph.kind not in (
            "warmup",
            "capacity",
            "settle",
        ):  # steps: capacity.judge
            for attr in ("ttft", "tpot", "itl"):
                limit = plan["streaming"].get(f"{attr}_p99_ms")
                if limit is not None:
                    judged.append(
                        (
                            f"{ph.name} {attr.upper()}",
                            getattr(ph.streaming, f"{attr}_ms"),
                            {"p99": float(limit)},
                        )
                    )
    if regression:
        judged.append(("the whole run (regression)", totals.latency_ms, {"p99": None}))
    for name, lat, keys in judged:
        if lat is None:
            continue  # nothing measured: the generator's own check says so
        for key, limit in keys.items():
            bound = lat.ci.get(key)
            if bound is not None and not bound.enough and not _failure_established(bound, limit):
                reasons.append(
                    f"{name}: {_short(key, bound)}: an SLO depends on it, and {bound.needed} samples are "
                    f"needed to bound it at {confidence:.0%} confidence"
                )
    return reasons


def shown(lat: object, key: str) -> str | None:
    """'not enough samples (n of m)' for a percentile that cannot be bounded, else None."""
    ci = getattr(lat, "ci", None) or {}
    bound = ci.get(key)
    if bound is None or bound.enough:
        return None
    return f"not enough samples ({bound.n} of {bound.needed})"
