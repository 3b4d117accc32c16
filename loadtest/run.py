"""A run: one test from its start to its summary, and everything it owns.

Locust's web UI runs many tests in one process, one after another, so nothing a
test owns lives at module level: a `Run` is made when a test starts, hung on
Locust's `Environment` (`runs(environment).current`), and dropped when it has
finished. On the master (or a local runner) the run drives the phases and
collects; on a worker it follows the phase the master broadcasts and records.
A local runner does both.

What a run owns: its options, plan and phases (with when each began and
ended), the recorder of this process, the open-loop dispatcher, the resolved
targets and their input arrays, the setup errors of its users, and on the
master the latest snapshot of every worker, the server watch and the time
series file.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import gevent
import numpy as np
import psutil

from loadtest.openloop import Dispatcher
from loadtest.options import Options
from loadtest.plan import Phase, Plan, explicit_keys, load_plan, phases_for
from loadtest.recorder import UNFINISHED, Merged, Recorder, Snapshot, decode_into, drop, merge, new_hist
from loadtest.results import TargetInfo
from loadtest.series import Point, SeriesWriter
from loadtest.server_watch import ServerWatch
from loadtest.slices import Slicer
from loadtest.slo import unjudgeable
from loadtest.stability import StabilityWatch

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram
    from locust.env import Environment

    from loadtest.protocols import Target

log = logging.getLogger("modelsoak.loadgen")
Role = Literal["local", "master", "worker"]
PHASE_MESSAGE = "modelsoak_phase"
# The attribute of Locust's Environment that holds the runs.
ATTRIBUTE = "modelsoak_runs"


@dataclass
class PhaseRecord:
    phase: Phase
    started: float
    ended: float | None = None


@dataclass
class PhaseMessage:
    """What the master tells the workers every second: the phase, the share of
    the open-loop rate each worker sends, and the run it belongs to."""

    phase: Phase
    rate_share: float
    run_id: str
    rate_now: float
    token: str = ""  # unique per run, where run ids may repeat (--run-id)

    def as_dict(self) -> dict[str, object]:
        return {
            "phase": self.phase.as_dict(),
            "rate_share": self.rate_share,
            "run_id": self.run_id,
            "rate_now": self.rate_now,
            "token": self.token,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> PhaseMessage:
        phase = d["phase"]
        assert isinstance(phase, dict)
        return cls(
            Phase(**phase),
            float(d.get("rate_share", 1.0)),  # type: ignore[arg-type]
            str(d.get("run_id", "")),
            float(d.get("rate_now", 0.0)),  # type: ignore[arg-type]
            str(d.get("token", "")),
        )


def checked_plan(opts: Options) -> Plan:
    """The run's plan, with every threshold it sets judgeable by this run and
    the baseline readable; ValueError (naming what is wrong) otherwise."""
    plan = load_plan(opts.slo_file)
    refused = unjudgeable(
        explicit_keys(opts.slo_file), opts.scenario, bool(opts.server_metrics_url), opts.baseline is not None
    )
    if refused:
        raise ValueError(f"--slo-file {opts.slo_file}: " + "; ".join(refused))
    if opts.baseline is not None:
        from loadtest.results import Summary

        Summary.read(opts.baseline)  # a baseline it cannot compare with stops the run before it starts
    return plan


def role_of(environment: Environment) -> Role:
    from locust.runners import MasterRunner, WorkerRunner

    runner = environment.runner
    if isinstance(runner, MasterRunner):
        return "master"
    if isinstance(runner, WorkerRunner):
        return "worker"
    return "local"


class Run:
    """One test. `Run.begin` makes the driving run (master, local); a worker's
    run is made by `Run(environment, "worker", run_id)` when the master's first
    phase message of a new run arrives."""

    def __init__(self, environment: Environment, role: Role, run_id: str = "") -> None:
        self.environment = environment
        self.role: Role = role
        self.run_id = run_id
        # The driving run's token, unique per run even when --run-id repeats;
        # a worker's run takes it from the first phase message.
        self.token = uuid.uuid4().hex if role != "worker" else ""
        self.options: Options | None = None
        self.stopped = False
        self.finalized = False
        # -- the sending side (local, worker) --
        self.recorder = Recorder()
        self.dispatcher: Dispatcher | None = None
        self.targets: dict[tuple[str, str, str, int], Target] = {}
        self.arrays: dict[tuple[Target, int], dict[str, np.ndarray]] = {}
        self.setup_errors: list[str] = []
        self.target: TargetInfo | None = None
        self.phase: Phase | None = None
        self.rate_share = 1.0
        self.rate_now = 0.0
        self._cpu: gevent.Greenlet | None = None
        # -- the driving side (master, local) --
        self.plan: Plan = load_plan(None)
        self.results: Path | None = None
        self.started = time.time()
        self.ended: float | None = None
        self.phases: list[Phase] = []
        self.phase_index = 0
        self.history: list[PhaseRecord] = []
        self.snapshots: dict[str, Snapshot] = {}
        self.window: HdrHistogram = new_hist()
        self.workers_seen: dict[str, float] = {}
        self.lost_workers: dict[str, float] = {}
        self.flushed: set[str] = set()
        self.watch: ServerWatch | None = None
        self.setup_error = ""
        self.greenlets: list[gevent.Greenlet] = []
        self.series: SeriesWriter | None = None
        self.last_point = self.started
        self.slicer: Slicer | None = None
        self.stability: StabilityWatch | None = None

    # -- the driving side ---------------------------------------------------------------

    @classmethod
    def begin(cls, environment: Environment, role: Role) -> Run:
        """A new run on the master or a local runner: results folder, plan,
        phases, server watch, time series. A bad option or plan leaves the run
        with its `setup_error` set."""
        run = cls(environment, role)
        try:
            run._setup()
        except (ValueError, OSError) as exc:  # PlanError, bad options, unwritable results dir
            run.setup_error = str(exc)
            log.error("cannot start the run: %s", exc)
            return run
        if role == "local":
            run.start_sending(run.options)
        assert run.results is not None
        interval = run.options.series_interval if run.options else 2.0
        slice_s = run.options.slice_s if run.options else 10.0
        if run.options is not None and run.options.stable:  # the windows are the slices
            slice_s = run.options.stable_window_s
            run.stability = StabilityWatch(run.options.stable_max_windows)
        run.slicer = Slicer(slice_s, run.started, run.plan["validity"]["percentile_confidence"])
        run.slicer.on_close = run.stability.on_slice if run.stability is not None else None
        run.series = SeriesWriter(run.results / "timeseries.jsonl", interval, run.next_point)
        run.greenlets = [gevent.spawn(run.series.loop), gevent.spawn(run._broadcast_loop)]
        run.enter(0)
        return run

    def _setup(self) -> None:
        opts = Options.from_parsed(self.environment.parsed_options, self.environment.host)
        self.options = opts
        self.plan = checked_plan(opts)
        self.run_id = opts.new_run_id()
        self.results = opts.results_dir / self.run_id
        n, base = 1, self.run_id
        while self.results.exists() and not opts.run_id:
            n += 1
            self.run_id = f"{base}-{n}"  # the run's id is its folder's name
            self.results = opts.results_dir / self.run_id
        self.results.mkdir(parents=True, exist_ok=True)
        self.started = self.last_point = time.time()
        self.phases = phases_for(opts.scenario, self.plan, opts.batch_size, opts.arrival_rate)
        if not self.phases:
            name = "infer" if opts.batch_size == 1 else f"infer[bs={opts.batch_size}]"
            self.phases = [Phase(name, "none", opts.num_users or 1, None, opts.batch_size, opts.arrival_rate)]
        self.watch = ServerWatch(opts.server_metrics_url) if opts.server_metrics_url else None

    def enter(self, index: int) -> Phase:
        now = time.time()
        if self.history and self.history[-1].ended is None:
            self.history[-1].ended = now
        self.phase_index = index
        phase = self.phases[index]
        self.history.append(PhaseRecord(phase, now))
        self.phase = phase
        self.broadcast()
        log.info(
            "phase %s: %d users, batch %d%s",
            phase.name,
            phase.users,
            phase.batch_size,
            f", {phase.rate:g} req/s open loop" if phase.rate else "",
        )
        return phase

    def end_phases(self, at: float | None = None) -> None:
        if self.history and self.history[-1].ended is None:
            self.history[-1].ended = time.time() if at is None else at

    def end(self) -> float:
        """The run's end time, set once (when it first stops); the last phase ends with it."""
        if self.ended is None:
            self.ended = time.time()
        self.end_phases(self.ended)
        return self.ended

    def phase_message(self) -> PhaseMessage:
        assert self.phase is not None
        rate = self.phase.rate
        ramp = self.options.arrival_ramp_s if self.options else 0.0
        if ramp > 0:
            # Open loop ramped from zero over the run's first seconds, re-sent
            # every second: a piecewise-constant ramp.
            rate *= min(1.0, max(time.time() - self.started, 0.0) / ramp)
        return PhaseMessage(self.phase, 1.0 / max(self._worker_count(), 1), self.run_id, rate, self.token)

    def _worker_count(self) -> int:
        runner = self.environment.runner
        if runner is None or self.role != "master":
            return 1
        clients = runner.clients  # type: ignore[attr-defined]
        return max(1, len(clients.ready) + len(clients.running) + len(clients.spawning))

    def broadcast(self) -> None:
        if self.phase is None:
            return
        msg = self.phase_message()
        if self.role == "master" and self.environment.runner is not None:
            self.environment.runner.send_message(PHASE_MESSAGE, msg.as_dict())
        else:
            self.follow(msg)

    def _broadcast_loop(self) -> None:
        # Workers that join late, or miss a message, catch up within a second.
        while True:
            gevent.sleep(1.0)
            self.broadcast()
            self._check_workers()

    def stop_background(self) -> None:
        for g in self.greenlets:
            g.kill(block=False)
        self.greenlets = []
        if self.series is not None:
            self.series.close()

    def next_point(self) -> Point:
        """The time-series point of the interval since the last one (its window is consumed)."""
        if self.role == "local":
            decode_into(self.window, self.recorder.snapshot().window)
        window, self.window = self.window, new_hist()
        runner = self.environment.runner
        assert runner is not None
        now = time.time()
        span = max(now - self.last_point, 1e-3)
        self.last_point = now
        count = window.get_total_count()
        point = Point(
            t=round(now - self.started, 3),
            phase=self.phase.name if self.phase else "",
            users=runner.user_count,
            rps=round(count / span, 3),
            fail_rps=round(runner.stats.total.current_fail_per_sec, 3),
            count=count,
        )
        if count:
            point.p50_ms, point.p90_ms, point.p95_ms, point.p99_ms = (
                window.get_value_at_percentile(q) / 1000.0 for q in (50, 90, 95, 99)
            )
        if self.watch is not None:
            point.server_memory = self.watch.poll() or None
        if self.lost_workers:
            point.lost_workers = sorted(self.lost_workers)
        if self.slicer is not None:
            self.slicer.add(window, now, point.phase)
        drop(window)
        return point

    # -- the sending side ---------------------------------------------------------------

    def start_sending(self, opts: Options | None) -> None:
        """Dispatcher and CPU watch of this process (idempotent)."""
        if opts is None or self.dispatcher is not None:
            return
        if self.options is None:
            self.options = opts
        if opts.latency_log is not None:
            self.recorder.keep_raw()
        self.dispatcher = Dispatcher(self.recorder, opts.max_pending, opts.arrival, opts.seed)
        if self.role == "local" and opts.scenario == "none" and opts.run_time:
            self.dispatcher.until = time.monotonic() + opts.run_time - (time.time() - self.started)
        self.dispatcher.start()
        if self.phase is not None:
            self.dispatcher.set_rate(self.rate_now * self.rate_share)
        self._cpu = gevent.spawn(self._sample_cpu)

    def _sample_cpu(self) -> None:
        proc = psutil.Process()
        proc.cpu_percent(None)
        while True:
            gevent.sleep(1.0)
            self.recorder.add_cpu_sample(proc.cpu_percent(None))

    def follow(self, msg: PhaseMessage) -> None:
        """Adopt the phase the master runs (a local runner follows itself)."""
        self.phase = msg.phase
        self.rate_share = msg.rate_share
        self.rate_now = msg.rate_now
        self.run_id = msg.run_id or self.run_id
        self.token = msg.token or self.token
        if self.dispatcher is not None and not self.stopped:
            self.dispatcher.set_rate(self.rate_now * self.rate_share)

    def stop_sending(self) -> None:
        """Users are gone: no more sends or CPU samples; what was measured stays."""
        self.stopped = True
        if self.dispatcher is not None:
            self._unfinished(self.dispatcher.stop())
        if self._cpu is not None:
            self._cpu.kill(block=False)
            self._cpu = None

    def _unfinished(self, tickets: list[float]) -> None:
        """Sends no user took before the stop: unfinished, waiting since their scheduled time."""
        if not tickets or self.phase is None:
            return
        now = time.monotonic()
        for t in tickets:
            wait_ns = int((now - t) * 1e9)
            self.recorder.record(self.phase.name, wait_ns, UNFINISHED, self.phase.batch_size, 0, None)
        self.recorder.count_openloop("unfinished", len(tickets))

    def first_setup_error(self) -> str:
        return self.setup_errors[0] if self.setup_errors else ""

    # -- collecting (master / local) ----------------------------------------------------

    def on_worker_report(self, worker: str, snap: Snapshot) -> None:
        if snap.token not in ("", self.token):
            return  # a report from an earlier run
        self.workers_seen[worker] = time.time()
        self.lost_workers.pop(worker, None)
        decode_into(self.window, snap.window)
        self.snapshots[worker] = snap.without_window()
        if snap.target is not None:
            self.target = snap.target
        if snap.setup_error and not self.setup_error:
            self.setup_error = f"worker {worker}: {snap.setup_error}"
            log.error("stopping: %s", self.setup_error)

    def merged(self) -> Merged:
        if self.role == "local":
            return merge({"local": self.recorder.snapshot(take_window=False)})
        return merge(dict(self.snapshots))

    def _check_workers(self) -> None:
        runner = self.environment.runner
        # Workers leave the runner's list when the run ends: only a running
        # test can lose one.
        if runner is None or self.role != "master" or runner.state not in ("spawning", "running"):
            return
        clients = runner.clients  # type: ignore[attr-defined]
        for client in clients.values():
            if client.state == "missing" and client.id not in self.lost_workers:
                self.lost_workers[client.id] = time.time()
                log.error("worker %s went missing %.0f s into the run", client.id, time.time() - self.started)
        for worker in self.workers_seen:
            if worker not in clients and worker not in self.lost_workers:
                self.lost_workers[worker] = time.time()
                log.error("worker %s is gone %.0f s into the run", worker, time.time() - self.started)


@dataclass
class Runs:
    """The runs of one Locust process: the one under way, and the last one that
    finished (its numbers stay on /metrics, and a worker answers the master's
    last request for them, until the next run begins)."""

    current: Run | None = None
    last: Run | None = None
    metrics_port: int | None = None  # headless --metrics-port, once bound

    def latest(self) -> Run | None:
        return self.current or self.last

    def retire(self, run: Run) -> None:
        if self.current is run:
            self.current = None
        self.last = run


def runs(environment: Environment) -> Runs:
    """The runs hung on this Environment (made on first use)."""
    found = getattr(environment, ATTRIBUTE, None)
    if isinstance(found, Runs):
        return found
    made = Runs()
    setattr(environment, ATTRIBUTE, made)
    return made
