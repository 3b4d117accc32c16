"""The end of a run, on the master: summary.json, report.md, report.html, the
verdict table on stdout, the Pushgateway, and the process exit code.

Exit codes: 0 every SLO holds; 3 an SLO is broken (regression against the
baseline included); 4 the run is invalid (the generator could not keep up, a
worker was lost, nothing was measured); 2 the run could not be set up (bad
options, unreachable server); others are Locust's own."""

from __future__ import annotations

import logging

from loadtest import capacity, repeats, slo, trust, warmup, watchdog
from loadtest import slices as slicing
from loadtest.plan import explicit_keys, good_limits
from loadtest.provenance import collect
from loadtest.results import (
    EXIT_INVALID,
    EXIT_PASS,
    EXIT_SETUP,
    EXIT_SLO,
    Baseline,
    Breakdown,
    OpenLoop,
    PhaseResult,
    Provenance,
    Summary,
    Target,
    WorkerCpu,
)
from loadtest.run import Run, runs
from loadtest.series import Point, read_points
from loadtest.summary import (
    generator_summary,
    memory_summary,
    phase_summary,
    reduced_load_reasons,
    run_events,
    streaming_total,
    totals,
)

log = logging.getLogger("modelsoak.loadgen")


def build(run: Run, series: list[Point] | None = None) -> Summary:
    opts = run.options
    assert opts is not None
    ended = run.end()
    duration = max(ended - run.started, 1e-9)
    merged = run.merged()
    phases = phase_summary(run, merged)
    measured_s = _measured_duration(phases, duration)
    total = totals(merged, measured_s, run.plan["validity"]["percentile_confidence"])
    trust.total_goodput(total, phases, measured_s)
    total.streaming = streaming_total(merged.names, measured_s, good_limits(run.plan),
                                      run.plan["validity"]["percentile_confidence"])  # fmt: skip
    memory = memory_summary(run.watch, run.plan, run.started)
    generator = generator_summary(run.plan, merged, run.lost_workers, run.started)
    if run.role == "master":
        mc = run.master_cpu
        generator.master = WorkerCpu(mc.max, mc.mean, mc.saturated_fraction(run.plan["validity"]["max_cpu_percent"]),
                                     mc.lagged_fraction, mc.lag_max_s * 1000.0)  # fmt: skip
    generator.invalid_reasons += reduced_load_reasons(phases, opts.rebalance)
    reach = slo.reachability_checks(merged.openloop, run.started, ended)
    openloop = dict(merged.openloop)
    warm = warmup.summary_of(opts.warmup_s, opts.warmup_requests, merged.openloop)
    merged.release()
    kinds = {p.kind for p in phases}
    plan = run.plan
    stress = slo.stress_analysis(plan, phases) if "stress" in kinds else None
    open_loop_rates(generator.openloop, phases)
    search = capacity.analysis(plan, phases, run.cut_short) if opts.scenario == "capacity" else None
    if search is not None:
        # Steps past the capacity are overloaded by design: errors, drops and the
        # delivered rate are judged per step (capacity.judge), not over the run.
        checks = capacity.checks(search) + reach
    else:
        checks = slo.error_checks(plan, total, generator.openloop)
        checks += slo.sustained_checks(plan, generator.openloop) + reach
    if opts.scenario == "none":
        checks += slo.plain_checks(plan, explicit_keys(opts.slo_file), phases)
    checks += slo.latency_checks(plan, phases) + slo.throughput_checks(plan, phases)
    checks += slo.batch_checks(plan, phases) + slo.memory_checks(plan, kinds, memory)
    checks += slo.soak_latency_checks(plan, phases) + slo.concurrency_checks(plan, phases)
    checks += slo.spike_checks(plan, phases) + slo.streaming_checks(plan, phases)
    if stress is not None:
        checks += slo.stress_checks(plan, stress)
    baseline = None
    groups = repeats.groups(phases)
    comparisons = []
    if opts.baseline is not None:
        base = Summary.read(opts.baseline)  # read at the start too: a bad one never gets this far
        reg = slo.regression_checks(plan, total, base.totals)
        comparisons = repeats.compare(plan, groups, base.repeats) if groups and base.repeats else []
        if comparisons:
            # Repeats on both sides: a change counts when it is significant (Welch),
            # not when one number differs from another.
            reg = repeats.regression_checks(plan, comparisons)
        checks += reg
        baseline = Baseline(str(opts.baseline), base.run_id, base.totals, reg)
    # A percentile an SLO reads, with too few samples to bound it, cannot back a verdict.
    generator.invalid_reasons += trust.undersampled(plan, phases, total, baseline is not None)
    generator.valid = not generator.invalid_reasons
    slices = run.slicer.finish(ended) if run.slicer is not None else []
    drift = slicing.drift(plan, slices, {p.name: p.kind for p in phases})
    checks += slicing.drift_checks(drift)
    stability = run.stability.results([p.name for p in phases]) if run.stability is not None else []
    generator.invalid_reasons += [r.reason for r in stability if not r.stable]
    generator.valid = not generator.invalid_reasons
    if reach:
        # The target went away: that is its failure, whatever the generator saw meanwhile.
        verdict, code = "FAIL", EXIT_SLO
    elif not generator.valid:
        verdict, code = "INVALID", EXIT_INVALID
    elif all(c.passed for c in checks):
        verdict, code = "PASS", EXIT_PASS
    else:
        verdict, code = "FAIL", EXIT_SLO
    info = run.target
    target = Target(host=opts.host, protocol=opts.protocol, **(vars(info) if info else {}))
    prov = collect()
    provenance = Provenance(
        harness=prov.harness,
        libraries=prov.libraries,
        hardware=prov.hardware,
        target=target,
        server=run.watch.stats.get("server") if run.watch else None,
        server_gpu=run.watch.stats.get("gpu") if run.watch else None,
        seed=opts.seed,
        options=opts.as_record(),
        plan=plan,
        workers=sorted(set(run.snapshots) | set(run.lost_workers)) or ["local"],
    )
    return Summary(
        run_id=run.run_id,
        scenario=opts.scenario,
        started=run.started,
        ended=ended,
        duration_s=duration,
        provenance=provenance,
        phases=phases,
        totals=total,
        server_breakdown=_overall_breakdown(phases),
        memory=memory,
        stress=stress,
        generator=generator,
        slo=checks,
        baseline=baseline,
        verdict=verdict,
        exit_code=code,
        slices=slices,
        drift=drift,
        stability=stability,
        warmup=warm,
        capacity=search,
        repeats=groups,
        comparisons=comparisons,
        events=run_events(run, phases, openloop, series or []),
    )


def open_loop_rates(ol: OpenLoop, phases: list[PhaseResult]) -> None:
    """Offered: sends scheduled per second of the open-loop phases. Sustained:
    successful answers per second from the first answer to the last (the drain
    at the end included), warm-up sends counted."""
    open_phases = [p for p in phases if p.rate > 0]
    span = sum(p.ended_s - p.started_s for p in open_phases)
    if not ol.scheduled or span <= 0:
        return
    ok = sum(p.requests - p.failures for p in open_phases)
    answering = sum((p.requests - p.failures) / p.rps for p in open_phases if p.rps > 0)
    ol.offered_rps = ol.scheduled / span
    ol.sustained_rps = (ok + ol.warmup) / answering if answering > 0 else 0.0


def _measured_duration(phases: list[PhaseResult], fallback: float) -> float:
    spans = [p.ended_s - p.started_s for p in phases if p.requests]
    return sum(spans) if spans else fallback


def _overall_breakdown(phases: list[PhaseResult]) -> Breakdown:
    """Request-weighted server breakdown over the phases that have one, and the
    client-side remainder (network, serialisation, client) beside it."""
    weighted: dict[str, float] = {}
    n = 0
    client_mean = wait = 0.0
    for ph in phases:
        bd = ph.server_breakdown
        if bd is None:
            continue
        k = bd.requests
        n += k
        client_mean += (ph.latency_ms.mean if ph.latency_ms else 0.0) * k
        wait += (ph.client_split_ms or {}).get("send_wait", 0.0) * k
        for stage, v in bd.phases.items():
            weighted[stage] = weighted.get(stage, 0.0) + v.mean_ms * k
    if not n:
        return Breakdown(False, "the server sent no timing breakdown (not a modelsoak server)")
    means = {k: v / n for k, v in weighted.items()}
    client = client_mean / n
    outside = max(client - means.get("total", 0.0), 0.0)
    send_wait = min(wait / n, outside)
    return Breakdown(True, "", means, client, outside, send_wait, outside - send_wait)


def termination_message(s: Summary) -> str:
    """The verdict in a few lines: a Kubernetes Job's pod shows it as its termination message."""
    lines = [f"modelsoak {s.verdict} (exit code {s.exit_code}), run {s.run_id}"]
    lines += [f"FAIL: {c.metric}: {c.actual} (target {c.target})" for c in s.slo if not c.passed]
    lines += [f"INVALID: {r}" for r in s.generator.invalid_reasons]
    return "\n".join(lines)


def finish(run: Run) -> Summary | None:
    """Write everything and retire the run; returns the summary (None when the
    run could not start). Runs once per run."""
    environment = run.environment
    if run.finalized:
        return None
    run.finalized = True
    runs(environment).retire(run)
    run.end()
    if run.setup_error:
        run.stop_background()
        environment.process_exit_code = EXIT_SETUP
        if run.results is not None:
            (run.results / "error.txt").write_text(run.setup_error + "\n")
        print(f"\nmodelsoak: the run could not start: {run.setup_error}", flush=True)
        watchdog.write_termination_log(watchdog.own_termination_log(environment),
                                       f"modelsoak: the run could not start: {run.setup_error}")  # fmt: skip
        return None
    if run.options is None or run.results is None:
        return None
    try:
        if run.series is not None:
            run.series.write_points(final=True)
    except Exception:
        log.exception("the last time-series point could not be written")
    run.stop_background()
    from loadtest import advice, report

    series = read_points(run.results / "timeseries.jsonl")  # read once: events, diagnosis, report
    summary = build(run, series)
    summary.diagnosis = advice.diagnose(summary, series).headline
    summary.write(run.results / "summary.json")

    report.write(run.results, summary, series)
    print(report.verdict_table(summary, run.results), flush=True)
    watchdog.write_termination_log(watchdog.own_termination_log(environment), termination_message(summary))
    if run.options.pushgateway:
        from loadtest.metrics import push_summary

        try:
            push_summary(run.options.pushgateway, summary)
        except Exception as exc:  # a missing Pushgateway must not lose the run's result
            log.error("pushing the summary to %s failed: %s", run.options.pushgateway, exc)
    environment.process_exit_code = summary.exit_code
    log.info("run %s finished in %.1f s", run.run_id, summary.duration_s)
    return summary
