"""The capacity search while it runs (loadtest.capacity has the rules): when a
step or its settle phase ends, and which step comes next. loadtest.plugin asks
these at every tick of the scenario's shape."""

from __future__ import annotations

import logging

from loadtest.capacity import (
    REPORT_LAG_S,
    SETTLE,
    SETTLE_WAIT_S,
    STEP,
    cut_reason,
    judge,
    next_rate,
    settle_phase,
    step_phase,
)
from loadtest.plan import Phase
from loadtest.run import Run
from loadtest.summary import phase_summary

log = logging.getLogger("modelsoak.loadgen")


def phase_done(run: Run, phase: Phase, elapsed: float) -> bool:
    """A step ends at its length or when it has clearly failed; a settle phase once the
    step's answers are in (a master: every worker has reported since the step ended)."""
    assert phase.duration_s is not None
    if phase.kind == SETTLE:
        if elapsed < phase.duration_s:
            return False
        if run.role != "master" or elapsed > phase.duration_s + SETTLE_WAIT_S:
            return True
        step_end = run.history[-2].ended if len(run.history) >= 2 else None
        seen = [t for w, t in run.workers_seen.items() if w not in run.lost_workers]
        return step_end is None or all(t > step_end for t in seen)
    if elapsed >= phase.duration_s:
        return True
    merged = run.merged(names=[phase.name])
    try:
        lag = REPORT_LAG_S if run.role == "master" else 0.0
        why = cut_reason(run.plan, phase, merged.names.get(phase.name), elapsed, lag)
    finally:
        merged.release()
    if why:
        run.cut_short[phase.name] = why
    return bool(why)


def next_phase(run: Run) -> Phase | None:
    """After a step: its settle phase. After a settle phase: the step judged
    (only it: the search must not stall the senders with a merge of the whole
    run), then the next step, or None."""
    current = run.phases[run.phase_index]
    if current.kind == STEP:
        return settle_phase(run.plan, current)
    done = [rec for rec in run.history if rec.phase.kind == STEP][-1:]
    merged = run.merged(names=[rec.phase.name for rec in done])
    try:
        judged = phase_summary(run, merged, done)
    finally:
        merged.release()
    run.capacity_steps += [judge(run.plan, ph, run.cut_short) for ph in judged]
    steps = run.capacity_steps
    rate = next_rate(run.plan, steps)
    last = steps[-1] if steps else None
    if last is not None:
        verdict = "held" if last.passed else f"failed ({last.reason})"
        log.info("capacity: %s %s; next: %s", last.name, verdict, "done" if rate is None else f"{rate:g}/s")
    return None if rate is None else step_phase(run.plan, rate)
