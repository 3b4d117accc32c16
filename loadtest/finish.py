"""The end of a run, on the master: summary.json, report.md, report.html, the
verdict table on stdout, the Pushgateway, and the process exit code.

Exit codes: 0 every SLO holds; 3 an SLO is broken (regression against the
baseline included); 4 the run is invalid (the generator could not keep up, a
worker was lost, nothing was measured); 2 the run could not be set up (bad
options, unreachable server); others are Locust's own."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from loadtest import slo as _slo
from loadtest import summary as _summary
from loadtest.provenance import collect
from loadtest.run import RunState

log = logging.getLogger("modelsoak.loadgen")


def build(state: RunState) -> dict[str, Any]:
    opts = state.options
    assert opts is not None
    ended = state.extra.setdefault("ended", time.time())
    duration = max(ended - state.started, 1e-9)
    merged = state.merged()
    phases = _summary.phase_summary(state, merged)
    totals = _summary.totals(merged, _measured_duration(phases, duration))
    memory = _summary.memory_summary(state)
    generator = _summary.generator_summary(state, merged)
    kinds = {p["kind"] for p in phases}
    stress = _slo.stress_analysis(state.plan, phases) if "stress" in kinds else None
    checks = _slo.error_checks(state.plan, totals, generator["openloop"])
    checks += _slo.latency_checks(state.plan, phases) + _slo.throughput_checks(state.plan, phases)
    checks += _slo.batch_checks(state.plan, phases) + _slo.memory_checks(state.plan, kinds, memory)
    checks += _slo.soak_latency_checks(state.plan, phases) + _slo.concurrency_checks(state.plan, phases)
    checks += _slo.spike_checks(state.plan, phases)
    if stress is not None:
        checks += _slo.stress_checks(state.plan, stress)
    baseline = None
    if opts.baseline is not None:
        base = _summary.load_baseline(opts.baseline)
        reg = _slo.regression_checks(state.plan, totals, base)
        checks += reg
        baseline = {
            "path": str(opts.baseline),
            "run_id": base.get("run_id"),
            "totals": base["totals"],
            "checks": [c.as_dict() for c in reg],
        }
    if not generator["valid"]:
        verdict, code = "INVALID", _summary.EXIT_INVALID
    elif all(c.passed for c in checks):
        verdict, code = "PASS", _summary.EXIT_PASS
    else:
        verdict, code = "FAIL", _summary.EXIT_SLO
    breakdown = _overall_breakdown(phases)
    target = state.extra.get("target", {})
    return {
        "run_id": state.run_id,
        "scenario": opts.scenario,
        "started": state.started,
        "ended": ended,
        "duration_s": duration,
        "provenance": {
            **collect(),
            "target": {"host": opts.host, "protocol": opts.protocol, **target},
            "server": (state.watch.stats.get("server") if state.watch else None),
            "server_gpu": (state.watch.stats.get("gpu") if state.watch else None),
            "seed": opts.seed,
            "options": {
                k: (str(v) if v is not None and not isinstance(v, (int, float, str, bool)) else v)
                for k, v in vars(opts).items()
            },
            "plan": state.plan,
            "workers": sorted(set(state.snapshots) | set(state.lost_workers)) or ["local"],
        },
        "phases": phases,
        "totals": totals,
        "server_breakdown": breakdown,
        "memory": memory,
        "stress": stress,
        "generator": generator,
        "slo": [c.as_dict() for c in checks],
        "baseline": baseline,
        "verdict": verdict,
        "exit_code": code,
    }


def _measured_duration(phases: list[dict[str, Any]], fallback: float) -> float:
    spans = [p["ended_s"] - p["started_s"] for p in phases if p.get("requests")]
    return sum(spans) if spans else fallback


def _overall_breakdown(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Request-weighted server breakdown over the phases that have one, and the
    client-side remainder (network, serialisation, client) beside it."""
    weighted: dict[str, float] = {}
    n = 0
    client_mean = 0.0
    for ph in phases:
        bd = ph.get("server_breakdown")
        if not bd:
            continue
        k = bd["requests"]
        n += k
        client_mean += (ph["latency_ms"] or {}).get("mean", 0.0) * k
        for phase, v in bd["phases"].items():
            weighted[phase] = weighted.get(phase, 0.0) + v["mean_ms"] * k
    if not n:
        return {"available": False, "reason": "the server sent no timing breakdown (not a modelsoak server)"}
    means = {k: v / n for k, v in weighted.items()}
    client = client_mean / n
    total = means.get("total", 0.0)
    return {
        "available": True,
        "mean_ms": means,
        "client_mean_ms": client,
        "outside_server_ms": max(client - total, 0.0),
    }


def finish(state: RunState, environment: Any) -> dict[str, Any] | None:
    """Write everything; returns the summary (None when the run never started)."""
    if state.finalized:
        return None
    if state.setup_error:
        state.finalized = True
        state.end_background()
        environment.process_exit_code = _summary.EXIT_SETUP
        if state.results is not None:
            (state.results / "error.txt").write_text(state.setup_error + "\n")
        print(f"\nmodelsoak: the run could not start: {state.setup_error}", flush=True)
        return None
    if state.options is None or state.results is None:
        return None
    state.finalized = True
    state.end_phases()
    try:
        state.write_point()
    except Exception:
        log.exception("the last time-series point could not be written")
    state.end_background()
    summary = build(state)
    (state.results / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    from loadtest import report as _report

    _report.write(state.results, summary)
    print(_report.verdict_table(summary, state.results), flush=True)
    if state.options.pushgateway:
        from loadtest.metrics import push_summary

        try:
            push_summary(state.options.pushgateway, summary)
        except Exception as exc:  # a missing Pushgateway must not lose the run's result
            log.error("pushing the summary to %s failed: %s", state.options.pushgateway, exc)
    environment.process_exit_code = summary["exit_code"]
    return summary
