"""Locust event wiring: options, the phase messages, reports from workers to the
master, the scenario shape, and the end of each run. Every handler finds its
run on the Environment (loadtest.run.runs); nothing here holds state."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from locust import events

from loadtest import capacity, search, slo, watchdog
from loadtest import plan as plans
from loadtest.engine_client import engine_of
from loadtest.finish import finish
from loadtest.flags import add_arguments, uses_engine, web_ui_fields
from loadtest.openloop import DRAIN_S
from loadtest.options import Options
from loadtest.recorder import Recorder, Snapshot
from loadtest.results import EXIT_PASS, EXIT_SETUP, TargetInfo
from loadtest.run import PHASE_MESSAGE, PhaseMessage, Run, checked_plan, role_of, runs
from loadtest.summary import phase_summary
from server.netutil import PortInUse, port_in_use

if TYPE_CHECKING:
    from locust.env import Environment
    from locust.shape import LoadTestShape

FLUSH_MESSAGE = "modelsoak_flush"
FINAL_MESSAGE = "modelsoak_final"
# The master's answer to a report: the last histogram delta it folded (loadtest.fold).
ACK_MESSAGE = "modelsoak_ack"
# How long the master waits for the workers' final measurements at the end of a run.
FLUSH_TIMEOUT_S = 3.0 + DRAIN_S
# How long Locust's start waits for this process's request engine.
ENGINE_START_S = 30.0

log = logging.getLogger("modelsoak.loadgen")


def _listen(event: Any, listener: Callable[..., None]) -> None:
    # Locust's EventHook is untyped; going through Any keeps this module strict.
    event.add_listener(listener)


def _parser(parser: Any) -> None:
    add_arguments(parser)
    if not getattr(sys.excepthook, "modelsoak", False):
        sys.excepthook = _master_port_hook(sys.excepthook)


def _master_port_hook(previous: Callable[..., Any]) -> Callable[..., Any]:
    """Locust binds the master's port before any event of ours fires, and a port
    in use ends it with a traceback: say which port, as a setup error (exit 2)."""

    def hook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        from locust.exception import RPCError

        if isinstance(exc, RPCError) and "Address already in use" in str(exc):
            where = str(exc).rsplit("addr=", 1)[-1].strip("()'")
            print(f"modelsoak: the run could not start: master port {where} is already in use "
                  "(--master-bind-port); expected a free port", file=sys.stderr, flush=True)  # fmt: skip
            sys.stdout.flush()
            os._exit(EXIT_SETUP)  # nothing runs yet: the runner failed to start
        previous(kind, exc, tb)

    hook.modelsoak = True  # type: ignore[attr-defined]
    return hook


def _check_web_port(environment: Environment) -> None:
    """Locust binds the web UI's port after init, and a taken one ends in a traceback."""
    parsed = environment.parsed_options
    host = "" if parsed is None or parsed.web_host == "*" else str(parsed.web_host)
    port = int(getattr(parsed, "web_port", 0) or 0)
    if port_in_use(host or "0.0.0.0", port):
        _setup_failed(
            f"web UI port {port} on {host or '*'} is already in use (--web-port); expected a free port"
        )


def _preflight(environment: Environment) -> None:
    """Every option and the whole plan, checked before Locust starts any user:
    a headless run with a bad one exits 2 at once, naming it."""
    try:
        checked_plan(Options.from_parsed(environment.parsed_options, environment.host))
    except ValueError as exc:
        _setup_failed(str(exc))


def _setup_failed(why: str) -> None:
    log.error("cannot start the run: %s", why)
    print(f"\nmodelsoak: the run could not start: {why}", flush=True)
    raise SystemExit(EXIT_SETUP)


def _init(environment: Environment, **_: Any) -> None:
    role = role_of(environment)
    parsed = environment.parsed_options
    if role != "worker" and parsed is not None and parsed.headless:
        _preflight(environment)  # the web UI checks each run's options when it starts
    runner = environment.runner
    assert runner is not None
    engine = role != "master" and uses_engine(getattr(parsed, "client_engine", "auto"))
    # Started now and waited for, so it is ready before the first user and the
    # open-loop schedule's first send (its imports take a second or two).
    if engine and not engine_of(environment).wait_ready(ENGINE_START_S):
        log.error("the request engine did not start within %.0f s", ENGINE_START_S)
    elif engine and getattr(parsed, "client_engine", "") == "native" and not engine_of(environment).native:
        _setup_failed(f"--client-engine native: the native client is unavailable here ({engine_of(environment).why}); "
                      "expected gcc and libnghttp2-dev to build it, or --client-engine process")  # fmt: skip
    if role == "worker":
        runner.register_message(PHASE_MESSAGE, _on_phase)
        runner.register_message(FLUSH_MESSAGE, _on_flush)
        runner.register_message(ACK_MESSAGE, _on_ack)

        # Locust's report events carry no environment: these close over theirs.
        def report(client_id: str, data: dict[str, Any], **_: Any) -> None:
            data["modelsoak"] = _snapshot(runs(environment).latest())

        _listen(environment.events.report_to_master, report)
        watchdog.watch(environment, lambda: _snapshot(runs(environment).latest(), cumulative=True))
    if role == "master":
        runner.register_message(FINAL_MESSAGE, _on_final)

        def worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
            run = runs(environment).current
            if run is not None:
                _take_report(run, client_id, data)

        _listen(environment.events.worker_report, worker_report)
    if environment.web_ui is not None:
        _check_web_port(environment)
        _label_web_ui_fields(environment.web_ui)
    if role in ("master", "local") and environment.parsed_options is not None:
        from loadtest.metrics import attach

        try:
            attach(environment, environment.parsed_options.metrics_port)
        except PortInUse as exc:
            _setup_failed(f"{exc} (--metrics-port); expected a free port, or -1 for none")


def _label_web_ui_fields(web_ui: Any) -> None:
    """Locust rebuilds the page's fields from the parser on every visit; ours then
    get their group order, label and help (loadtest.flags)."""
    build = web_ui.update_template_args

    def update_template_args() -> None:
        build()
        web_ui.template_args["extra_options"] = web_ui_fields(web_ui.template_args.get("extra_options") or {})

    web_ui.update_template_args = update_template_args


# -- a worker ----------------------------------------------------------------------------


def _on_phase(environment: Environment, msg: Any, **_: Any) -> None:
    message = PhaseMessage.from_dict(msg.data)
    slot = runs(environment)
    run = slot.current
    if run is None or run.token not in ("", message.token):
        # The master's first message of a new run: the last run's numbers go.
        run = slot.current = Run(environment, "worker", message.run_id)
    elif run.stopped:
        return  # the master's last messages of a run this worker has stopped
    run.follow(message)


def _snapshot(run: Run | None, cumulative: bool = False) -> str:
    """A report's blob; `cumulative` (histograms whole, for a file) when no master will fold it."""
    if run is None:
        return ""
    return report_blob(
        run.recorder, run.run_id, run.token, run.target, run.first_setup_error(), cumulative
    ).pack()


def report_blob(
    recorder: Recorder,
    run_id: str,
    token: str,
    target: TargetInfo | None,
    setup_error: str,
    cumulative: bool = False,
) -> Snapshot:
    """What a worker attaches to its report (bench/_reports.py sends the same)."""
    snap = recorder.snapshot() if cumulative else recorder.report()
    snap.run_id = run_id
    snap.token = token
    snap.target = target
    snap.setup_error = setup_error
    return snap


def _on_ack(environment: Environment, msg: Any, **_: Any) -> None:
    run = runs(environment).latest()
    if run is not None and msg.data.get("token") == run.token:
        run.recorder.acknowledge(int(msg.data["seq"]))


def _on_flush(environment: Environment, msg: Any, **_: Any) -> None:
    # The worker may still be draining its open-loop sends: answer once they are settled.
    gevent.spawn(_answer_flush, environment)


def _answer_flush(environment: Environment) -> None:
    runner = environment.runner
    assert runner is not None
    run = runs(environment).latest()
    end = time.monotonic() + DRAIN_S + 1.0
    while run is not None and not run.stopped and time.monotonic() < end:
        gevent.sleep(0.05)
    runner.send_message(FINAL_MESSAGE, {"modelsoak": _snapshot(runs(environment).latest())})


# -- the master ----------------------------------------------------------------------------


def _on_final(environment: Environment, msg: Any, **_: Any) -> None:
    run = runs(environment).current
    if run is not None:
        _take_report(run, msg.node_id, msg.data)
        run.flushed.add(msg.node_id)


def _take_report(run: Run, worker: str, data: dict[str, Any]) -> None:
    blob = data.get("modelsoak")
    if not blob:
        return
    snap = Snapshot.unpack(blob)
    run.on_worker_report(worker, snap)
    runner = run.environment.runner
    if snap.deltas and snap.token in ("", run.token) and runner is not None:
        # The worker drops what was folded; what this misses rides in its next report.
        runner.send_message(
            ACK_MESSAGE, {"seq": run.folded.seq[worker], "token": snap.token}, client_id=worker
        )


def _flush_workers(run: Run, timeout_s: float) -> None:
    """Ask every worker for its measurements now, while the master still listens:
    Locust's own final report on quit gets half a second, which a loaded worker
    can miss, and the run's last seconds would go unmeasured."""
    runner = run.environment.runner
    assert runner is not None
    waiting = {c.id for c in runner.clients.values() if c.state != "missing"}  # type: ignore[attr-defined]
    run.flushed = set()
    runner.send_message(FLUSH_MESSAGE, {})
    end = time.monotonic() + timeout_s
    while waiting - run.flushed and time.monotonic() < end:
        gevent.sleep(0.05)
    missing = waiting - run.flushed
    if missing:
        log.warning("no final measurements from %s; their last periodic report stands", sorted(missing))


def _test_start(environment: Environment, **_: Any) -> None:
    if role_of(environment) != "worker":
        return  # the master's (or local runner's) run began at the shape's first tick
    slot = runs(environment)
    if slot.current is None or slot.current.stopped:
        slot.current = Run(environment, "worker")
    slot.current.start_sending(Options.from_parsed(environment.parsed_options, environment.host))


def _test_stopping(environment: Environment, **_: Any) -> None:
    """Before Locust stops the users: close the open-loop schedule and let
    queued and in-flight sends finish (what is left is unfinished)."""
    run = runs(environment).current
    if run is None:
        return
    if run.role != "worker":
        run.end()  # the run ends when its schedule closes; the drain only settles it
    if run.dispatcher is not None:
        run.dispatcher.drain(DRAIN_S)


def _test_stop(environment: Environment, **_: Any) -> None:
    run = runs(environment).current
    if run is None:
        return
    run.stop_sending()
    if run.role == "worker":
        return  # its numbers stay until the master's final request and the next run
    run.end()
    if run.role == "master":
        _flush_workers(run, FLUSH_TIMEOUT_S)
    opts = environment.parsed_options
    if opts is not None and not opts.headless:
        finish(run)  # the web UI stays up for the next run; headless runs finish at quit


def _write_latency_log(run: Run) -> None:
    folder = run.options.latency_log if run.options else None
    raw = run.recorder.raw
    if folder is not None and raw is not None:
        import numpy as np

        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"latencies-{os.getpid()}.npy", np.array(raw, dtype=np.int64))


def _quitting(environment: Environment, **_: Any) -> None:
    slot = runs(environment)
    run = slot.latest()
    if run is None:
        return
    _write_latency_log(run)
    if run.role == "worker":
        if environment.process_exit_code is None:
            environment.process_exit_code = EXIT_SETUP if run.setup_errors else EXIT_PASS
        return
    if run.role == "local" and run.setup_errors and not run.setup_error:
        run.setup_error = run.first_setup_error()
    finish(run)


# -- the shape ---------------------------------------------------------------------------


def tick(shape: LoadTestShape) -> tuple[int, float] | None:
    """Users and spawn rate now; None ends the run. The shape's first tick of a
    test begins the run (it comes before Locust's test_start, which the
    shape's first start() fires)."""
    assert shape.runner is not None
    env = shape.runner.environment
    slot = runs(env)
    run = slot.current
    if run is None or run.finalized:
        run = slot.current = Run.begin(env, role_of(env))
        if run.setup_error and env.parsed_options is not None and not env.parsed_options.headless:
            finish(run)  # the web UI: say so now, the next run starts clean
            return None
    if run.setup_error or (run.role == "local" and run.setup_errors):
        run.setup_error = run.setup_error or run.first_setup_error()
        return None
    opts = run.options
    assert opts is not None
    if opts.scenario == "none" and opts.repeat == 1:
        if opts.run_time and time.time() - run.started >= opts.run_time:
            return None
        if run.stability is not None and run.stability.done(run.phases[0].name):
            return None
        users = int(opts.num_users or 1)
        return users, float(opts.spawn_rate or users)
    phase = run.phases[run.phase_index]
    if _phase_done(run, phase):
        if not _advance(run):
            return None
        phase = run.phases[run.phase_index]
    return phase.users, float(phase.spawn_rate or phase.users)


def _phase_done(run: Run, phase: plans.Phase) -> bool:
    elapsed = time.time() - run.history[-1].started
    if phase.kind in capacity.KINDS:
        return search.phase_done(run, phase, elapsed)
    if run.stability is not None and phase.duration_s is not None:
        return run.stability.done(phase.name)  # --stable: windows decide, not the duration
    if phase.duration_s is not None:
        return elapsed >= phase.duration_s
    if phase.requests_per_user:
        merged = run.merged(names=[phase.name])
        st = merged.names.get(phase.name)
        sent = sum(st.statuses.values()) if st else 0
        merged.release()
        limit = run.options.phase_timeout_s if run.options else 0.0
        if limit and elapsed > limit:
            log.error("phase %s: %d of %d requests after %.0f s (--phase-timeout-s); moving on",
                      phase.name, sent, phase.users * phase.requests_per_user, elapsed)  # fmt: skip
            return True
        return sent >= phase.users * phase.requests_per_user
    return False


def _advance(run: Run) -> bool:
    """Move to the next phase; False when the scenario is over."""
    opts = run.options
    assert opts is not None
    phase = run.phases[run.phase_index]
    if phase.kind in capacity.KINDS:
        run.end_phases()
        following = search.next_phase(run)
        if following is None:
            return False
        run.phases.append(following)
    if phase.kind == "stress":
        run.end_phases()
        merged = run.merged()
        step = slo.stress_analysis(run.plan, phase_summary(run, merged)).steps[-1]
        merged.release()
        if not step.held:
            log.info("stress: %s broke the SLO (p99 %s ms); stopping", step.name, step.p99_ms)
            return False
        if not plans.stress_has_next(run.plan, run.phase_index, opts.arrival_rate):
            return False
        run.phases.append(plans.stress_step(run.plan, run.phase_index + 1, opts.arrival_rate))
    if run.phase_index + 1 >= len(run.phases):
        return False
    run.enter(run.phase_index + 1)
    return True


# Registered when Locust imports the locustfile (which imports this module).
_listen(events.init_command_line_parser, _parser)
_listen(events.init, _init)
_listen(events.test_start, _test_start)
_listen(events.test_stopping, _test_stopping)
_listen(events.test_stop, _test_stop)
_listen(events.quitting, _quitting)
