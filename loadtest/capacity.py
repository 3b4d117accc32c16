"""The capacity search (--scenario capacity): the highest open-loop arrival rate
at which the plan's SLO holds.

The search runs steps, each one open-loop rate held for a while. It ramps up
exponentially (start_rate, x growth, ...) until a step fails, then bisects
between the highest rate that held and the lowest that did not, until that
bracket is within `precision` of its low end. Like the stress scenario it adds
its phases as it goes (loadtest.plugin asks `next_phase` at each phase's end).

A step holds when its percentile (the plan's, p99 by default) is bounded by
enough samples at the run's confidence (loadtest.stats) and below the limit,
its error ratio (failed and unfinished sends) is within the plan's, and the
server answered at least errors.min_sustained_ratio of what was offered. A
step lasts long enough to collect the samples its percentile needs at its
rate (p99 at 99 %: 662, p90: 64), and is cut short as soon as it has clearly
failed: its percentile's lower confidence bound is already over the limit, its
errors already exceed what the whole step may have, or its unanswered sends
keep piling up (queue and latency growing without bound).

After each step comes a quiet settle phase (no sends): the step's last answers
arrive, sends still queued for it are counted unfinished (its own, not the next
step's), the server's queue empties, and on a master every worker's report of
the step has come in before it is judged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from loadtest.plan import Phase, Plan
from loadtest.recorder import STREAM_KEYS
from loadtest.results import Capacity, CapacityStep, Check, PhaseResult
from loadtest.stats import min_samples, percentile_interval

if TYPE_CHECKING:
    from loadtest.engine_dispatch import EngineDispatcher
    from loadtest.openloop import Dispatcher, Ticket
    from loadtest.recorder import NameStats

STEP = "capacity"
SETTLE = "pause"  # a phase kind whose open-loop rate is zero: nothing is sent
KINDS = (STEP, SETTLE)
# Samples a step aims at, over what its percentile needs: warm-up and a slow start eat some.
SAMPLE_MARGIN = 1.3
# Locust workers report every 3 s: a master's view of a step lags by about that much.
REPORT_LAG_S = 4.0
# A send still queued at its step's end this soon after its time is no backlog: a user is about to take it.
FRESH_S = 0.1
# A settle phase waits at most this long for the workers' reports of its step.
SETTLE_WAIT_S = 10.0


# Inter-token latencies counted on per streamed request when a step's length is chosen.
ITL_PER_REQUEST = 8


def _key(plan: Plan) -> str:
    return f"p{float(plan['capacity']['percentile']):g}"


def token_limits(plan: Plan) -> dict[str, float]:
    """The streaming p99 limits ("ttft", "tpot", "itl" -> ms) that judge a streamed
    search's steps instead of capacity.latency_ms (only a streaming protocol may set them)."""
    return {
        k: float(v)
        for k in ("ttft", "tpot", "itl")
        if (v := plan["streaming"].get(f"{k}_p99_ms")) is not None
    }


def criterion(plan: Plan) -> str:
    c = plan["capacity"]
    limits = token_limits(plan)
    if limits:
        return " and ".join(f"{k.upper()} p99 < {v:g} ms" for k, v in limits.items())
    return f"{_key(plan)} < {c['latency_ms']:g} ms"


def step_seconds(plan: Plan, rate: float) -> float:
    """Long enough for the step's percentile to be bounded at its rate."""
    c = plan["capacity"]
    limits = token_limits(plan)
    q = 0.99 if limits else float(c["percentile"]) / 100.0
    needed = min_samples(q, plan["validity"]["percentile_confidence"])
    # A TTFT or TPOT is one sample per request; an ITL one per token after the first
    # (at least ITL_PER_REQUEST of them counted on: a step short of samples fails, named).
    per_request = ITL_PER_REQUEST if limits and set(limits) == {"itl"} else 1
    want = math.ceil(SAMPLE_MARGIN * needed / (rate * per_request))
    return float(min(float(c["max_step_s"]), max(float(c["min_step_s"]), want)))


def users_for(plan: Plan, rate: float) -> int:
    """In-flight slots: twice what a rate needs at the latency limit (Little's law), so
    a step that holds is never short of senders; an overloaded one queues its sends in
    the dispatcher, where their wait counts."""
    limit_s = float(plan["capacity"]["latency_ms"]) / 1000.0
    return int(min(1000, max(8, math.ceil(2 * rate * limit_s) + 4)))


def step_phase(plan: Plan, rate: float) -> Phase:
    c = plan["capacity"]
    rate = round(rate, 3)
    return Phase(
        f"capacity[rate={rate:g}]",
        STEP,
        users_for(plan, rate),
        step_seconds(plan, rate),
        c["batch_size"],
        rate,
    )


def first_step(plan: Plan, rate: float) -> Phase:
    return step_phase(plan, rate if rate > 0 else float(plan["capacity"]["start_rate"]))


def settle_phase(plan: Plan, step: Phase) -> Phase:
    # The step's users stay (no user is stopped while its answer is on the way);
    # the rate is kept for the record, but nothing is scheduled (loadtest.run).
    return Phase(
        f"{step.name}:settle",
        SETTLE,
        step.users,
        float(plan["capacity"]["settle_s"]),
        step.batch_size,
        step.rate,
    )


def judge(plan: Plan, ph: PhaseResult, cut: dict[str, str]) -> CapacityStep:
    c = plan["capacity"]
    key = _key(plan)
    lat = ph.latency_ms
    value = lat.at(key) if lat is not None else None
    bound = lat.ci.get(key) if lat is not None else None
    needed = min_samples(float(c["percentile"]) / 100.0, plan["validity"]["percentile_confidence"])
    n = bound.n if bound is not None else 0
    enough = bound is not None and bound.enough
    err = ph.failures / ph.requests if ph.requests else 1.0
    need_rate = float(plan["errors"]["min_sustained_ratio"]) * ph.rate
    # Delivered: the step's successful answers over the step's own length. Its
    # last answers may come in while it settles; they are the step's all the same.
    length = max(ph.ended_s - ph.started_s, 1e-9)
    delivered = (ph.requests - ph.failures) / length
    reasons = []
    if cut.get(ph.name):
        reasons.append(f"cut short: {cut[ph.name]}")
    token_slos = _token_slos(plan, ph)
    if token_slos is not None:
        # A streamed step is judged on the plan's TTFT / TPOT / ITL p99 limits
        # instead of the request's whole latency (which grows with its length).
        reasons += token_slos
    elif not enough:
        reasons.append(f"{key} not enough samples ({n} of {needed})")
    elif value is None or value >= c["latency_ms"]:
        reasons.append(f"{key} {_ms(value)} ms >= {c['latency_ms']:g} ms")
    if err > c["max_error_ratio"]:
        reasons.append(f"error ratio {err:.2%} > {c['max_error_ratio']:.2%}")
    if delivered < need_rate:
        reasons.append(f"delivered {delivered:.1f}/s of {ph.rate:g}/s offered")
    return CapacityStep(
        name=ph.name,
        offered_rps=ph.rate,
        delivered_rps=delivered,
        percentile=key,
        latency_ms=value,
        ci_low_ms=bound.low if bound is not None else None,
        ci_high_ms=bound.high if bound is not None else None,
        samples=n,
        needed=needed,
        error_ratio=err,
        goodput_rps=ph.streaming.goodput_rps if ph.streaming is not None else ph.goodput_rps,
        passed=not reasons,
        cut_short=ph.name in cut,
        reason="; ".join(reasons),
    )


def _token_slos(plan: Plan, ph: PhaseResult) -> list[str] | None:
    """A streamed step against the plan's streaming p99 limits: why it failed
    ([] when it held); None when the step did not stream or the plan sets none."""
    limits = {k: plan["streaming"].get(f"{k}_p99_ms") for k in ("ttft", "tpot", "itl")}
    if ph.streaming is None or all(v is None for v in limits.values()):
        return None
    out = []
    for k, limit in limits.items():
        if limit is None:
            continue
        lat = getattr(ph.streaming, f"{k}_ms")
        bound = lat.ci.get("p99") if lat is not None else None
        if bound is None or (not bound.enough and (bound.low is None or bound.low < limit)):
            out.append(
                f"{k.upper()} p99 not enough samples ({bound.n if bound else 0} of {bound.needed if bound else '?'})"
            )
        elif (v := lat.at("p99")) is None or v >= limit:
            out.append(f"{k.upper()} p99 {_ms(v)} ms >= {limit:g} ms")
    return out


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}" if x < 10 else f"{x:.1f}"


def bracket(steps: list[CapacityStep]) -> tuple[float | None, float | None]:
    """The highest rate that held, and the lowest above it that did not."""
    lo = max((s.offered_rps for s in steps if s.passed), default=None)
    failed = [s.offered_rps for s in steps if not s.passed and (lo is None or s.offered_rps > lo)]
    return lo, min(failed, default=None)


def converged(plan: Plan, lo: float | None, hi: float | None) -> bool:
    return lo is not None and hi is not None and hi - lo <= float(plan["capacity"]["precision"]) * lo


def next_rate(plan: Plan, steps: list[CapacityStep]) -> float | None:
    """The next step's rate, or None when the search is over."""
    c = plan["capacity"]
    if not steps or len(steps) >= int(c["max_steps"]):
        return None
    lo, hi = bracket(steps)
    if hi is None:  # everything held so far: ramp up, up to max_rate
        assert lo is not None
        top = float(c["max_rate"])
        return min(lo * float(c["growth"]), top) if lo < top else None
    if lo is None:  # nothing held: ramp down, down to min_rate
        down = hi / float(c["growth"])
        return down if down >= float(c["min_rate"]) else None
    return None if converged(plan, lo, hi) else (lo + hi) / 2.0


def analysis(plan: Plan, phases: list[PhaseResult], cut: dict[str, str]) -> Capacity:
    c = plan["capacity"]
    steps = [judge(plan, ph, cut) for ph in phases if ph.kind == STEP]
    lo, hi = bracket(steps)
    done = converged(plan, lo, hi)
    if lo is None:
        reason = "no step held the SLO" + (
            f" (down to {min(s.offered_rps for s in steps):g}/s)" if steps else ""
        )
    elif hi is None:
        reason = (
            f"every step held, up to {lo:g}/s: the capacity is at least that (capacity.max_rate or max_steps)"
        )
    elif not done:
        reason = f"capacity.max_steps ({c['max_steps']}) reached before the bracket was within {c['precision']:.0%}"
    else:
        reason = f"bracket {lo:g} … {hi:g}/s, within {c['precision']:.0%}"
    return Capacity(
        found_rps=lo,
        low_rps=lo,
        high_rps=hi,
        precision=float(c["precision"]),
        converged=done,
        percentile=_key(plan),
        latency_ms=float(c["latency_ms"]),
        max_error_ratio=float(c["max_error_ratio"]),
        min_capacity=None if c["min_capacity"] is None else float(c["min_capacity"]),
        reason=reason,
        steps=steps,
        criterion=criterion(plan) if token_limits(plan) else "",
    )


def checks(cap: Capacity) -> list[Check]:
    slo = f"{cap.criterion or f'{cap.percentile} < {cap.latency_ms:g} ms'} and errors <= {cap.max_error_ratio:.0%}"
    found = "none" if cap.found_rps is None else f"{cap.found_rps:g}/s"
    if cap.found_rps is not None and cap.high_rps is not None:
        found += f" (bracket {cap.low_rps:g} … {cap.high_rps:g}/s)"
    target = "a rate that holds" if cap.min_capacity is None else f">= {cap.min_capacity:g}/s"
    ok = cap.found_rps is not None and (cap.min_capacity is None or cap.found_rps >= cap.min_capacity)
    return [Check("capacity", f"highest open-loop rate with {slo}", target, found, ok, cap.reason)]


# -- while the search runs (loadtest.plugin) ------------------------------------------------


def cut_reason(plan: Plan, phase: Phase, st: NameStats | None, elapsed: float, lag_s: float) -> str:
    """Why a running step has clearly failed already ('' while it may still hold)."""
    c = plan["capacity"]
    if elapsed < 1.0 or phase.duration_s is None:
        return ""
    answered = sum(st.statuses.values()) if st is not None else 0
    failures = answered - (st.statuses.get("OK", 0) if st is not None else 0)
    limit_s = float(c["latency_ms"]) / 1000.0
    backlog = phase.rate * elapsed - answered
    if backlog > phase.rate * (max(2 * limit_s, 1.0) + lag_s) + 5:
        return f"{backlog:.0f} sends unanswered after {elapsed:.0f} s: the queue keeps growing"
    if failures > c["max_error_ratio"] * phase.rate * phase.duration_s:
        return f"{failures} failed requests, more than the whole step may have"
    limits = token_limits(plan)
    ttft = st.server.get(STREAM_KEYS["ttft"]) if st is not None else None
    if "ttft" in limits and ttft is not None and ttft.get_total_count():
        iv = percentile_interval(ttft, 0.99, plan["validity"]["percentile_confidence"], scale=1000.0)
        if iv.low is not None and iv.low >= limits["ttft"]:
            return (
                f"TTFT p99 at least {iv.low:.1f} ms (its lower confidence bound), over {limits['ttft']:g} ms"
            )
    if not limits and st is not None and st.latency.get_total_count():
        q = float(c["percentile"]) / 100.0
        iv = percentile_interval(st.latency, q, plan["validity"]["percentile_confidence"], scale=1000.0)
        if iv.low is not None and iv.low >= c["latency_ms"]:
            return f"{_key(plan)} at least {iv.low:.1f} ms (its lower confidence bound), over {c['latency_ms']:g} ms"
    return ""


def take_backlog(dispatcher: Dispatcher | EngineDispatcher, fresh_s: float = FRESH_S) -> list[Ticket]:
    """The step's backlog at its end: sends no user has taken although they
    have waited more than `fresh_s` (the step could not keep up with them),
    out of the queue, to be counted unfinished. Fresher ones stay queued: a
    user is about to take them, and they are sent (under their step's name)
    while the step settles."""
    return dispatcher.take_backlog(fresh_s)


def scheduled_rate(phase: Phase, rate: float) -> float:
    """The open-loop rate to schedule in a phase: none while a capacity step settles."""
    return 0.0 if phase.kind == SETTLE else rate


# -- the report ------------------------------------------------------------------------------


def report_lines(cap: Capacity | None) -> list[str]:
    if cap is None:
        return []
    found = "none" if cap.found_rps is None else f"**{cap.found_rps:g} requests/s**"
    hi = "not reached" if cap.high_rps is None else f"{cap.high_rps:g}/s"
    lines = [
        "## Capacity search",
        "",
        f"- SLO: {cap.criterion or f'{cap.percentile} < {cap.latency_ms:g} ms'}, error ratio <= {cap.max_error_ratio:.0%}",
        f"- Capacity: {found}; bracket {cap.low_rps if cap.low_rps is not None else 'none'} … {hi} "
        f"(precision {cap.precision:.0%}{', reached' if cap.converged else ', not reached'}): {cap.reason}",
        "",
        f"| Step | Offered/s | Delivered/s | {cap.percentile} ms (CI) | Samples | Errors | Goodput/s | Result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in cap.steps:
        if s.samples >= s.needed:
            hi_ci = "unbounded" if s.ci_high_ms is None else _ms(s.ci_high_ms)
            lat = f"{_ms(s.latency_ms)} ({_ms(s.ci_low_ms)} … {hi_ci})"
        else:
            lat = f"not enough samples ({s.samples} of {s.needed})"
        result = "PASS" if s.passed else "FAIL"  # a step cut short says so in its reason
        note = f" — {s.reason}" if s.reason else ""
        lines.append(
            f"| {s.name} | {s.offered_rps:g} | {s.delivered_rps:.1f} | {lat} | {s.samples} | "
            f"{s.error_ratio:.1%} | {s.goodput_rps:.1f} | {result}{note} |"
        )
    return [*lines, ""]
