"""Locust event wiring: options, roles, the phase messages, reports from workers
to the master, the scenario shape, and the end of the run."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import gevent
import psutil
from locust import events
from locust.runners import MasterRunner, WorkerRunner

from loadtest import openloop as _openloop
from loadtest import plan as _plan
from loadtest import slo as _slo
from loadtest import summary as _summary
from loadtest.finish import finish
from loadtest.options import Options, add_arguments
from loadtest.recorder import RECORDER, pack
from loadtest.run import PHASE_MESSAGE, STATE
from loadtest.user import SETUP_ERRORS

FLUSH_MESSAGE = "modelsoak_flush"
FINAL_MESSAGE = "modelsoak_final"

log = logging.getLogger("modelsoak.loadgen")


@events.init_command_line_parser.add_listener
def _parser(parser: Any) -> None:
    add_arguments(parser)


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    runner = environment.runner
    STATE.environment = environment
    STATE.role = (
        "master"
        if isinstance(runner, MasterRunner)
        else "worker"
        if isinstance(runner, WorkerRunner)
        else "local"
    )
    if STATE.role == "worker":
        runner.register_message(PHASE_MESSAGE, _on_phase)
        runner.register_message(FLUSH_MESSAGE, _on_flush)
    if STATE.role == "master":
        runner.register_message(FINAL_MESSAGE, _on_final)
    if STATE.role in ("master", "local") and environment.parsed_options is not None:
        from loadtest.metrics import attach

        attach(environment, STATE, environment.parsed_options.metrics_port)


def _on_phase(environment: Any, msg: Any, **_: Any) -> None:
    if msg.data.get("run_id") != STATE.run_id:
        RECORDER.reset()
        SETUP_ERRORS.clear()
    STATE.follow(msg.data)


@events.test_start.add_listener
def _test_start(environment: Any, **_: Any) -> None:
    if STATE.role == "master":
        return
    opts = Options.from_parsed(environment.parsed_options, environment.host)
    if opts.latency_log is not None and RECORDER.raw is None:
        RECORDER.raw = []
    disp = _openloop.dispatcher(opts.max_pending, opts.arrival, opts.seed)
    disp.start()
    if STATE.phase is not None:
        disp.set_rate(STATE.rate_now * STATE.rate_share)
    if "cpu" not in STATE.extra:
        STATE.extra["cpu"] = gevent.spawn(_sample_cpu)


def _sample_cpu() -> None:
    proc = psutil.Process()
    proc.cpu_percent(None)
    while True:
        gevent.sleep(1.0)
        RECORDER.add_cpu_sample(proc.cpu_percent(None))


def _packed_snapshot() -> str:
    snap = RECORDER.snapshot()
    snap["run_id"] = STATE.run_id
    snap["target"] = STATE.extra.get("target")
    snap["setup_error"] = SETUP_ERRORS[0] if SETUP_ERRORS else ""
    return pack(snap)


@events.report_to_master.add_listener
def _report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    data["modelsoak"] = _packed_snapshot()


def _on_flush(environment: Any, msg: Any, **_: Any) -> None:
    environment.runner.send_message(FINAL_MESSAGE, {"modelsoak": _packed_snapshot()})


def _on_final(environment: Any, msg: Any, **_: Any) -> None:
    STATE.on_worker_report(msg.node_id, msg.data)
    STATE.extra.setdefault("flushed", set()).add(msg.node_id)


def _flush_workers(environment: Any, timeout_s: float = 3.0) -> None:
    """Ask every worker for its measurements now, while the master still listens:
    Locust's own final report on quit gets half a second, which a loaded worker
    can miss, and the run's last seconds would go unmeasured."""
    runner = environment.runner
    waiting = {c.id for c in runner.clients.values() if c.state != "missing"}
    STATE.extra["flushed"] = set()
    runner.send_message(FLUSH_MESSAGE, {})
    end = time.monotonic() + timeout_s
    while waiting - STATE.extra["flushed"] and time.monotonic() < end:
        gevent.sleep(0.05)
    missing = waiting - STATE.extra["flushed"]
    if missing:
        log.warning("no final measurements from %s; their last periodic report stands", sorted(missing))


@events.worker_report.add_listener
def _worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    STATE.on_worker_report(client_id, data)
    snap = STATE.snapshots.get(client_id)
    if snap is None:
        return
    if snap.get("target"):
        STATE.extra["target"] = snap["target"]
    if snap.get("setup_error") and not STATE.setup_error:
        STATE.setup_error = f"worker {client_id}: {snap['setup_error']}"
        log.error("stopping: %s", STATE.setup_error)


@events.test_stop.add_listener
def _test_stop(environment: Any, **_: Any) -> None:
    if STATE.role == "worker":
        if _openloop.DISPATCHER is not None:
            _openloop.DISPATCHER.set_rate(0)
        return
    STATE.end_phases()
    SHAPE.begun = False
    if STATE.role == "master":
        _flush_workers(environment)
    opts = environment.parsed_options
    if opts is not None and not opts.headless:
        # Web UI: workers keep reporting for a few seconds after the stop.
        gevent.spawn_later(4.0, finish, STATE, environment)


def _write_latency_log(environment: Any) -> None:
    opts = environment.parsed_options
    folder = getattr(opts, "latency_log", "") if opts is not None else ""
    if folder and RECORDER.raw is not None:
        import os

        import numpy as np

        Path(folder).mkdir(parents=True, exist_ok=True)
        np.save(Path(folder) / f"latencies-{os.getpid()}.npy", np.array(RECORDER.raw, dtype=np.int64))


@events.quitting.add_listener
def _quitting(environment: Any, **_: Any) -> None:
    _write_latency_log(environment)
    if STATE.role == "worker":
        if environment.process_exit_code is None:
            environment.process_exit_code = _summary.EXIT_SETUP if SETUP_ERRORS else _summary.EXIT_PASS
        return
    if STATE.role == "local" and SETUP_ERRORS and not STATE.setup_error:
        STATE.setup_error = SETUP_ERRORS[0]
    finish(STATE, environment)


# -- the shape ---------------------------------------------------------------------------


class ShapeState:
    """Where the shape is in the current run's phases. A run begins at the first
    tick of a test and ends at test_stop (Locust's master resets the shape's clock
    whenever it starts users, so that cannot mark a new run)."""

    def __init__(self) -> None:
        self.begun = False
        self.index = 0


SHAPE = ShapeState()


def tick(shape: Any, ss: ShapeState = SHAPE) -> tuple[int, float] | None:
    env = STATE.environment
    if not ss.begun:
        ss.begun = True
        ss.index = 0
        try:
            STATE.begin(env)
        except (ValueError, OSError) as exc:  # PlanError, bad options, unwritable results dir
            STATE.setup_error = str(exc)
            log.error("cannot start the run: %s", exc)
            return None
    if STATE.setup_error or (STATE.role == "local" and SETUP_ERRORS):
        STATE.setup_error = STATE.setup_error or SETUP_ERRORS[0]
        return None
    opts = STATE.options
    assert opts is not None
    elapsed_total = time.time() - STATE.started
    if opts.scenario == "none":
        parsed = env.parsed_options
        if parsed.run_time and elapsed_total >= parsed.run_time:
            return None
        users = int(parsed.num_users or 1)
        return users, float(parsed.spawn_rate or users)
    phase = STATE.phases[ss.index]
    if _phase_done(phase):
        if not _advance(ss):
            return None
        phase = STATE.phases[ss.index]
    return phase.users, float(phase.spawn_rate or phase.users)


def _phase_done(phase: _plan.Phase) -> bool:
    rec = STATE.history[-1]
    elapsed = time.time() - rec.started
    if phase.duration_s is not None:
        return elapsed >= phase.duration_s
    if phase.requests_per_user:
        st = STATE.merged().names.get(phase.name)
        sent = sum(st.statuses.values()) if st else 0
        return sent >= phase.users * phase.requests_per_user or elapsed > 600
    return False


def _advance(ss: ShapeState) -> bool:
    """Move to the next phase; False when the scenario is over."""
    opts = STATE.options
    assert opts is not None
    phase = STATE.phases[ss.index]
    if phase.kind == "stress":
        STATE.end_phases()
        summary = _summary.phase_summary(STATE, STATE.merged())
        step = _slo.stress_analysis(STATE.plan, summary)["steps"][-1]
        if not step["held"]:
            log.info("stress: %s broke the SLO (p99 %s ms); stopping", step["name"], step["p99_ms"])
            return False
        if not _plan.stress_has_next(STATE.plan, ss.index, opts.arrival_rate):
            return False
        STATE.phases.append(_plan.stress_step(STATE.plan, ss.index + 1, opts.arrival_rate))
    if ss.index + 1 >= len(STATE.phases):
        return False
    ss.index += 1
    STATE.enter(ss.index)
    return True
