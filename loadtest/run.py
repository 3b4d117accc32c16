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
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import gevent
import numpy as np
import psutil

from loadtest import capacity, repeats
from loadtest.engine_client import engine_pid, watch_engine_loop
from loadtest.engine_dispatch import EngineDispatcher
from loadtest.flags import STREAMING, uses_engine
from loadtest.fold import Folded
from loadtest.openloop import Dispatcher, Ticket
from loadtest.options import Options
from loadtest.plan import Phase, Plan, explicit_keys, good_limits, load_plan, phases_for
from loadtest.recorder import (
    LOOP_TICK_S,
    UNFINISHED,
    CpuStats,
    Merged,
    Recorder,
    Snapshot,
    decode_into,
    drop,
    merge,
    new_hist,
)
from loadtest.results import CapacityStep, TargetInfo
from loadtest.series import Point, SeriesWriter
from loadtest.server_watch import ServerWatch
from loadtest.slices import Slicer
from loadtest.slo import unjudgeable
from loadtest.stability import StabilityWatch
from loadtest.warmup import Warmup

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
    # Users actually running, every second on a master: (time.time(), count).
    users_running: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class PhaseMessage:
    """What the master tells the workers every second: the phase, the share of
    the open-loop rate each worker sends, and the run it belongs to."""

    phase: Phase
    rate_share: float
    run_id: str
    rate_now: float
    token: str = ""  # unique per run, where run ids may repeat (--run-id)
    warmup_left_s: float = 0.0  # what is left of --warmup-s, by the master's clock
    warmup_requests: int = 0  # --warmup-requests, the run's (loadtest.warmup splits it)
    # Streamed requests: the plan's goodput limits ("ttft_ms", "tpot_ms", "e2e_ms"), judged per request.
    good_ms: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "phase": self.phase.as_dict(),
            "rate_share": self.rate_share,
            "run_id": self.run_id,
            "rate_now": self.rate_now,
            "token": self.token,
            "warmup_left_s": self.warmup_left_s,
            "warmup_requests": self.warmup_requests,
            "good_ms": self.good_ms,
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
            float(d.get("warmup_left_s", 0.0)),  # type: ignore[arg-type]
            int(d.get("warmup_requests", 0)),  # type: ignore[call-overload]
            {str(k): float(v) for k, v in dict(d.get("good_ms") or {}).items()},  # type: ignore[call-overload]
        )


def checked_plan(opts: Options) -> Plan:
    """The run's plan, with every threshold it sets judgeable by this run and
    the baseline readable; ValueError (naming what is wrong) otherwise."""
    plan = load_plan(opts.slo_file)
    refused = unjudgeable(
        explicit_keys(opts.slo_file),
        opts.scenario,
        bool(opts.server_metrics_url),
        opts.baseline is not None,
        opts.protocol in STREAMING,
    )
    if refused:
        raise ValueError(f"--slo-file {opts.slo_file}: " + "; ".join(refused))
    if opts.baseline is not None:
        from loadtest.results import Summary

        Summary.read(opts.baseline)  # a baseline it cannot compare with stops the run before it starts
    return plan


def watch_loop(
    tick: Callable[[float], None], sample: Callable[[float], None], helper: Callable[[], int] | None = None
) -> None:
    """Forever: this process's CPU percent each second (`sample`), and between
    samples how late a LOOP_TICK_S sleep wakes up (`tick`). `helper`: the pid of
    a process that works for this one (its request engine, 0 when none), whose
    CPU counts too: the busier of the two says whether the generator is short of CPU."""
    proc = psutil.Process()
    proc.cpu_percent(None)
    other: psutil.Process | None = None
    while True:
        end = time.monotonic() + 1.0
        while (now := time.monotonic()) < end:
            gevent.sleep(LOOP_TICK_S)
            tick(time.monotonic() - now - LOOP_TICK_S)
        percent = proc.cpu_percent(None)
        pid = helper() if helper is not None else 0
        if pid and (other is None or other.pid != pid):
            other = _process(pid)  # its first sample counts from now
        elif other is not None and pid:
            try:
                percent = max(percent, other.cpu_percent(None))
            except psutil.Error:
                other = None
        sample(percent)


def _process(pid: int) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        proc.cpu_percent(None)
        return proc
    except psutil.Error:
        return None


# A master of hundreds of workers takes ~170 reports/s, decompressed and parsed:
# a burst after a stall leaves the C heap at its high-water mark, freed but kept,
# and RSS grows in steps that never come back. Every TRIM_EVERY_S, glibc is asked
# to return free heap pages (a few ms; a no-op elsewhere).
TRIM_EVERY_S = 30
_libc: Any = None


def trim_heap() -> None:
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util

        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


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
        self.warmup = Warmup(self.recorder)
        self.good_ms: dict[str, float] = {}  # the goodput limits of streamed requests (PhaseMessage)
        self.dispatcher: Dispatcher | EngineDispatcher | None = None
        self.followed: Phase | None = None  # the phase this process sends for
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
        self.folded = Folded()  # the workers' histogram deltas, merged as they arrive
        # The series' histograms and failures by request time (the clock's
        # interval number), merged across workers until their point is written.
        self.windows: dict[int, HdrHistogram] = {}
        self.window_fails: dict[int, int] = {}
        self.token_windows: dict[int, dict[str, HdrHistogram]] = {}  # streamed TTFT / ITL per interval
        self.next_bucket: int | None = None  # the first interval not written yet
        self.user_samples: list[tuple[float, int]] = []  # (time, users running): each point's users
        self.master_cpu = CpuStats()  # the master's own CPU and event-loop lag
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
        self.cut_short: dict[str, str] = {}  # capacity steps ended early, and why (loadtest.capacity)
        self.capacity_steps: list[CapacityStep] = []  # each step as judged when it settled

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
        if role == "master" and run.options is not None and environment.parsed_options is not None:
            # Locust's master moves a lost worker's users to the survivors as soon as
            # it is missing (not 60 s later) when rebalancing is on; the arrival-rate
            # share follows the live workers (phase_message) either way.
            environment.parsed_options.enable_rebalancing = run.options.rebalance
        assert run.results is not None
        interval = run.options.series_interval if run.options else 2.0
        slice_s = run.options.slice_s if run.options else 10.0
        if run.options is not None and run.options.stable:  # the windows are the slices
            slice_s = run.options.stable_window_s
            run.stability = StabilityWatch(run.options.stable_max_windows)
        run.slicer = Slicer(slice_s, run.started, run.plan["validity"]["percentile_confidence"])
        run.slicer.on_close = run.stability.on_slice if run.stability is not None else None
        run.series = SeriesWriter(run.results / "timeseries.jsonl", interval, run.next_points)
        run.greenlets = [gevent.spawn(run.series.loop), gevent.spawn(run._broadcast_loop)]
        if role == "master":
            run.greenlets.append(gevent.spawn(watch_loop, run.master_cpu.add_tick, run.master_cpu.add))
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
        if opts.scenario == "capacity":
            self.phases = [capacity.first_step(self.plan, opts.arrival_rate)]
        if not self.phases:
            name = "infer" if opts.batch_size == 1 else f"infer[bs={opts.batch_size}]"
            self.phases = [Phase(name, "none", opts.num_users or 1, None, opts.batch_size, opts.arrival_rate)]
        self.phases = repeats.expand(self.phases, opts.repeat, opts.run_time)
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
        rate = capacity.scheduled_rate(self.phase, self.phase.rate)
        ramp = self.options.arrival_ramp_s if self.options else 0.0
        if ramp > 0:
            # Open loop ramped from zero over the run's first seconds, re-sent
            # every second: a piecewise-constant ramp.
            rate *= min(1.0, max(time.time() - self.started, 0.0) / ramp)
        opts = self.options
        left = max(opts.warmup_s - (time.time() - self.started), 0.0) if opts else 0.0
        warmup = opts.warmup_requests if opts else 0
        share = 1.0 / max(self._worker_count(), 1)
        good = good_limits(self.plan)
        return PhaseMessage(self.phase, share, self.run_id, rate, self.token, left, warmup, good)

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
        tick = 0
        while True:
            gevent.sleep(1.0)
            self.broadcast()
            self._check_workers()
            self._sample_users()
            tick += 1
            if self.role == "master" and tick % TRIM_EVERY_S == 0:
                trim_heap()

    def _sample_users(self) -> None:
        """The users the workers say they run (a lost worker's count drops out)."""
        runner = self.environment.runner
        if runner is None or self.role != "master" or not self.history:
            return
        if runner.state not in ("spawning", "running") or self.stopped or self.history[-1].ended is not None:
            return  # the run is ending: its users stop, and that is no reduced load
        self.history[-1].users_running.append((time.time(), int(runner.user_count)))

    def stop_background(self) -> None:
        for g in self.greenlets:
            g.kill(block=False)
        self.greenlets = []
        if self.series is not None:
            self.series.close()

    def _take_windows(self, snap: Snapshot) -> None:
        for key, enc in snap.windows.items():
            b = self._unwritten(int(key))
            hist = self.windows.get(b)
            if hist is None:  # not setdefault: a histogram made and discarded per report would pile up
                hist = self.windows[b] = new_hist()
            decode_into(hist, enc)
        for key, n in snap.window_fails.items():
            b = self._unwritten(int(key))
            self.window_fails[b] = self.window_fails.get(b, 0) + n
        for key, hists in snap.token_windows.items():
            held = self.token_windows.setdefault(self._unwritten(int(key)), {})
            for short, enc in hists.items():
                if short not in held:
                    held[short] = new_hist()
                decode_into(held[short], enc)

    def _unwritten(self, bucket: int) -> int:
        """A window whose interval's point is already written counts in the first
        one not yet written: late, not lost (the series then holds every request)."""
        return bucket if self.next_bucket is None else max(bucket, self.next_bucket)

    def _phase_at(self, t: float) -> str:
        for rec in reversed(self.history):
            if rec.started <= t:
                return rec.phase.name
        return self.history[0].phase.name if self.history else ""

    def _users_at(self, t: float) -> int:
        before = [n for when, n in self.user_samples if when <= t]
        return before[-1] if before else (self.user_samples[0][1] if self.user_samples else 0)

    def next_points(self, final: bool = False) -> list[Point]:
        """The series points of the intervals every request of which has arrived
        (workers report every 3 s: a master waits that long past an interval's
        end), each from the requests that ended in it, whichever worker sent them;
        `final`: every interval up to now."""
        # The server's memory first: its poll waits on the network, and a greenlet that
        # waits can be killed there (the run's end stops the series greenlet while the
        # last points are written). From here on nothing waits, so the intervals this
        # call takes are written, never lost with a killed call.
        if self.watch is None and self.target is not None and self.target.metrics_url:
            # Our server says where its metrics are: watch them without --server-metrics-url.
            self.watch = ServerWatch(self.target.metrics_url)
            log.info("server metrics from the server's model config: %s", self.target.metrics_url)
        memory = (self.watch.poll() or None) if self.watch is not None else None
        if self.role == "local":
            self._take_windows(self.recorder.snapshot(take_window=True, names=()))
        runner = self.environment.runner
        assert runner is not None
        now = time.time()
        self.user_samples = [*self.user_samples[-120:], (now, int(runner.user_count))]
        width = self.options.series_interval if self.options is not None else 2.0
        if self.next_bucket is None:
            self.next_bucket = int(self.started // width)
        lag = 0.0 if final else (capacity.REPORT_LAG_S if self.role == "master" else width / 2)
        last = int((now - lag) // width) - (0 if final else 1)  # the last interval to write now
        points = []
        while self.next_bucket <= last:
            b = self.next_bucket
            self.next_bucket += 1
            window = self.windows.pop(b, None) or new_hist()
            fails = self.window_fails.pop(b, 0)
            end = min((b + 1) * width, now)
            span = max(end - max(b * width, self.started), 1e-3)
            count = window.get_total_count()
            point = Point(
                t=round(end - self.started, 3),
                phase=self._phase_at(b * width + width / 2),
                users=self._users_at(end),
                rps=round(count / span, 3),
                fail_rps=round(fails / span, 3),
                count=count,
            )
            if count:
                point.p50_ms, point.p90_ms, point.p95_ms, point.p99_ms = (
                    window.get_value_at_percentile(q) / 1000.0 for q in (50, 90, 95, 99)
                )
            for short, hist in self.token_windows.pop(b, {}).items():
                if hist.get_total_count():
                    setattr(point, f"{short}_p50_ms", hist.get_value_at_percentile(50) / 1000.0)
                    setattr(point, f"{short}_p99_ms", hist.get_value_at_percentile(99) / 1000.0)
                drop(hist)
            if self.lost_workers:
                point.lost_workers = sorted(w for w, t in self.lost_workers.items() if t <= end) or None
            if self.slicer is not None:
                self.slicer.add(window, end, point.phase)
            drop(window)
            points.append(point)
        for late in [k for k in self.windows if k < self.next_bucket]:  # arrived after its point
            drop(self.windows.pop(late))
        for late in [k for k in self.token_windows if k < self.next_bucket]:
            drop(*self.token_windows.pop(late).values())
        if memory is not None and points:
            points[-1].server_memory = memory
        return points

    # -- the sending side ---------------------------------------------------------------

    def start_sending(self, opts: Options | None) -> None:
        """Dispatcher and CPU watch of this process (idempotent)."""
        if opts is None or self.dispatcher is not None:
            return
        if self.options is None:
            self.options = opts
        if opts.latency_log is not None:
            self.recorder.keep_raw()
        self.recorder.set_bucket(opts.series_interval)
        if uses_engine(opts.client_engine) and opts.protocol not in STREAMING:
            # The schedule runs on the request engine's loop, beside the calls it makes.
            self.dispatcher = EngineDispatcher(
                self.environment, self.recorder, self.warmup, opts.max_pending, opts.arrival, opts.seed
            )
        else:
            self.dispatcher = Dispatcher(self.recorder, opts.max_pending, opts.arrival, opts.seed)
        if self.role == "local" and opts.scenario == "none" and opts.run_time:
            self.dispatcher.until = time.monotonic() + opts.run_time - (time.time() - self.started)
        self.dispatcher.start()
        if self.phase is not None:
            self.dispatcher.set_rate(self.rate_now * self.rate_share, self.phase.name)
        self._cpu = gevent.spawn(self._sample_cpu)

    def _sample_cpu(self) -> None:
        """CPU percent each second, and between samples the event loop's lag:
        how late a short sleep wakes up, here and in the request engine."""
        watch_engine_loop(self.environment, self.recorder.add_loop_tick)
        watch_loop(
            self.recorder.add_loop_tick, self.recorder.add_cpu_sample, lambda: engine_pid(self.environment)
        )

    def follow(self, msg: PhaseMessage) -> None:
        """Adopt the phase the master runs (a local runner follows itself)."""
        # The phase followed until now (on a local runner `self.phase` is already the new one).
        old = self.followed
        if old is not None and old.kind == capacity.STEP and msg.phase.name != old.name and self.dispatcher:
            self._unfinished(capacity.take_backlog(self.dispatcher))  # the step's own, not the next's
        self.followed = msg.phase
        self.phase = msg.phase
        self.rate_share = msg.rate_share
        self.rate_now = msg.rate_now
        self.run_id = msg.run_id or self.run_id
        self.token = msg.token or self.token
        index = int(getattr(self.environment.runner, "worker_index", 0) or 0)
        self.warmup.follow(msg.warmup_left_s, msg.warmup_requests, msg.rate_share, max(index, 0))
        self.good_ms = msg.good_ms
        if self.dispatcher is not None and not self.stopped:
            self.dispatcher.set_rate(self.rate_now * self.rate_share, msg.phase.name)

    def stop_sending(self) -> None:
        """Users are gone: no more sends or CPU samples; what was measured stays."""
        self.stopped = True
        if self.dispatcher is not None:
            self._unfinished(self.dispatcher.stop())
        if self._cpu is not None:
            self._cpu.kill(block=False)
            self._cpu = None

    def _unfinished(self, tickets: list[Ticket]) -> None:
        """Sends no user took before the stop: unfinished, waiting since their
        scheduled time, under the name of the phase that scheduled them."""
        if not tickets or self.phase is None:
            return
        now = time.monotonic()
        for t, name in tickets:
            wait_ns = int((now - t) * 1e9)
            self.recorder.record(name or self.phase.name, wait_ns, UNFINISHED, self.phase.batch_size, 0, None)
        self.recorder.count_openloop("unfinished", len(tickets))

    def first_setup_error(self) -> str:
        return self.setup_errors[0] if self.setup_errors else ""

    # -- collecting (master / local) ----------------------------------------------------

    def on_worker_report(self, worker: str, snap: Snapshot) -> None:
        if snap.token not in ("", self.token):
            return  # a report from an earlier run
        self.workers_seen[worker] = time.time()
        self.lost_workers.pop(worker, None)
        self._take_windows(snap)
        self.folded.fold(worker, snap.deltas)
        self.snapshots[worker] = snap.without_window()
        if snap.target is not None:
            self.target = snap.target
        if snap.setup_error and not self.setup_error:
            self.setup_error = f"worker {worker}: {snap.setup_error}"
            log.error("stopping: %s", self.setup_error)

    def merged(self, names: Collection[str] | None = None) -> Merged:
        """Everything measured so far, merged; `names`: at least those request
        names (a local run then copies only them)."""
        if self.role == "local":
            return merge({"local": self.recorder.snapshot(take_window=False, names=names)})
        return merge(dict(self.snapshots), self.folded)

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
