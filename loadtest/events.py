"""What happened during a run, on its time axis, for the charts' markers: phase
changes, a worker lost, the target unreachable, an SLO broken — the summary's
own `events`, and what can be derived from the rest of the summary and the time
series for summaries written before it had them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from loadtest.results import Check, Summary
from loadtest.series import Point

_UNREACHABLE = re.compile(r"from t=(-?[\d.]+) s for ([\d.]+) s")
_LIMIT = re.compile(r"^<\s*([\d.]+)\s*ms$")
_PERCENTILE = re.compile(r"\b(p50|p90|p95|p99)\b")


@dataclass(frozen=True)
class Marker:
    t_s: float  # seconds since the run started
    kind: str  # "phase", "worker lost", "unreachable", "slo", or the kind a summary's event names
    detail: str
    end_s: float | None = None  # a span (the target unreachable until then)


def phase_events(s: Summary, series: list[Point]) -> list[Marker]:
    if s.phases:
        return [Marker(ph.started_s, "phase", ph.name) for ph in s.phases]
    out: list[Marker] = []
    for p in series:
        if not out or out[-1].detail != p.phase:
            out.append(Marker(p.t, "phase", p.phase))
    return out


def lost_worker_events(s: Summary, series: list[Point]) -> list[Marker]:
    """A lost worker at the first series point that names it (the summary's
    list has names only)."""
    out = []
    for worker in s.generator.lost_workers:
        seen = next((p.t for p in series if worker in (p.lost_workers or [])), None)
        if seen is not None:
            out.append(Marker(seen, "worker lost", str(worker)))
    return out


def unreachable_events(s: Summary) -> list[Marker]:
    out = []
    for c in s.slo:
        m = _UNREACHABLE.search(c.actual) if c.name == "target reachable" and not c.passed else None
        if m:
            start = float(m.group(1))
            out.append(Marker(start, "unreachable", c.actual, start + float(m.group(2))))
    return out


def _latency_limit(c: Check) -> tuple[str, float] | None:
    """A latency check's percentile and limit in ms ("latency p99", "< 100 ms")."""
    q = _PERCENTILE.search(c.name) or _PERCENTILE.search(c.metric)
    limit = _LIMIT.match(c.target.strip())
    if q is None or limit is None or "regression" in c.name:
        return None
    return q.group(1), float(limit.group(1))


def slo_thresholds(s: Summary) -> list[tuple[str, float]]:
    """The latency limits the run was judged by, once each (drawn on the latency chart)."""
    seen: dict[tuple[str, float], None] = {}
    for c in s.slo:
        found = _latency_limit(c)
        if found is not None:
            seen[found] = None
    return list(seen)[:4]


def slo_events(s: Summary, series: list[Point]) -> list[Marker]:
    """A failed latency check: from the first interval whose percentile went over
    its limit; failed error checks: from the first failure."""
    out = []
    for c in s.slo:
        if c.passed:
            continue
        found = _latency_limit(c)
        if found is not None:
            q, limit = found
            t = next((p.t for p in series if (v := getattr(p, f"{q}_ms")) is not None and v > limit), None)
            if t is not None:
                out.append(Marker(t, "slo", f"{c.name}: {q} over {limit:g} ms"))
        elif c.name == "errors":
            t = next((p.t for p in series if p.fail_rps > 0), None)
            if t is not None:
                out.append(Marker(t, "slo", f"{c.name}: first failure"))
    return out


def kind_of(name: str) -> str:
    """A summary event's kind in the charts' words ("worker_lost" is "worker lost",
    "slo_broken" is "slo")."""
    k = name.lower().replace("_", " ").replace("-", " ")
    if k.startswith("phase"):
        return "phase"
    if "worker" in k and "lost" in k:
        return "worker lost"
    if "unreachable" in k:
        return "unreachable"
    return "slo" if "slo" in k.split() else k


def summary_events(s: Summary) -> list[Marker]:
    """The events the summary records itself ({t_s, kind, detail, duration_s})."""
    return [
        Marker(e.t_s, kind_of(e.kind), e.detail, e.t_s + e.duration_s if e.duration_s > 0 else None)
        for e in s.events
    ]


def run_events(s: Summary, series: list[Point]) -> list[Marker]:
    """Every event once. The summary's own events (timed by the master as they
    happened) stand for their kinds; what is derived here fills the kinds they
    lack (older summaries: all of them) and adds where a failed error check's
    failures began."""
    own = summary_events(s)
    covered = {e.kind for e in own}
    derived = phase_events(s, series) + lost_worker_events(s, series)
    derived += unreachable_events(s) + slo_events(s, series)
    extra = [
        d for d in derived if d.kind not in covered or (d.kind == "slo" and d.detail.startswith("errors"))
    ]
    return sorted(own + extra, key=lambda e: e.t_s)
