"""The run: its options, plan, current phase, and (on the master) the merged view
of every worker, the server watch and the time series written as the run goes.

One `STATE` per process. On the master (or a local runner) it drives the
phases and collects; on a worker it follows the phase the master broadcasts and
records."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import gevent

from loadtest import recorder as _recorder
from loadtest.options import Options
from loadtest.plan import Phase, load_plan, phases_for
from loadtest.recorder import RECORDER, Merged, merge, unpack
from loadtest.server_watch import ServerWatch

log = logging.getLogger("modelsoak.loadgen")
PHASE_MESSAGE = "modelsoak_phase"
SERIES_INTERVAL_S = 2.0


@dataclass
class PhaseRecord:
    phase: Phase
    started: float
    ended: float | None = None


@dataclass
class RunState:
    options: Options | None = None
    plan: dict[str, dict[str, Any]] = field(default_factory=dict)
    role: str = "local"  # local | master | worker
    run_id: str = ""
    results: Path | None = None
    started: float = 0.0
    phases: list[Phase] = field(default_factory=list)
    history: list[PhaseRecord] = field(default_factory=list)
    phase: Phase | None = None
    rate_share: float = 1.0
    rate_now: float = 0.0
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    window: Any = None
    workers_seen: dict[str, float] = field(default_factory=dict)
    lost_workers: dict[str, float] = field(default_factory=dict)
    watch: ServerWatch | None = None
    setup_error: str = ""
    finalized: bool = False
    greenlets: list[gevent.Greenlet] = field(default_factory=list)
    series_file: TextIO | None = None
    environment: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    # -- run lifecycle (master / local) -----------------------------------------------

    def begin(self, environment: Any) -> None:
        """A new run: results folder, plan, phases, server watch, series writer."""
        self.end_background()
        self.environment = environment
        opts = Options.from_parsed(environment.parsed_options, environment.host)
        self.options = opts
        self.plan = load_plan(opts.slo_file)
        self.run_id = opts.new_run_id()
        self.results = opts.results_dir / self.run_id
        n = 1
        while self.results.exists() and not opts.run_id:
            n += 1
            self.results = opts.results_dir / f"{self.run_id}-{n}"
        self.results.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.phases = phases_for(opts.scenario, self.plan, opts.batch_size, opts.arrival_rate)
        if not self.phases:
            self.phases = [
                Phase(
                    _default_name(opts.batch_size),
                    "none",
                    opts.num_users or 1,
                    None,
                    opts.batch_size,
                    opts.arrival_rate,
                )
            ]
        self.history = []
        self.snapshots = {}
        self.workers_seen = {}
        self.lost_workers = {}
        self.window = _recorder.new_hist()
        self.finalized = False
        self.setup_error = ""
        self.extra.pop("last_point", None)
        self.watch = ServerWatch(opts.server_metrics_url) if opts.server_metrics_url else None
        self.series_file = (self.results / "timeseries.jsonl").open("a", buffering=1)
        RECORDER.reset()
        self.greenlets = [gevent.spawn(self._series_loop), gevent.spawn(self._broadcast_loop)]
        self.enter(0)

    def enter(self, index: int) -> Phase:
        now = time.time()
        if self.history and self.history[-1].ended is None:
            self.history[-1].ended = now
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

    def end_phases(self) -> None:
        if self.history and self.history[-1].ended is None:
            self.history[-1].ended = time.time()

    def end_background(self) -> None:
        for g in self.greenlets:
            g.kill(block=False)
        self.greenlets = []
        if self.series_file is not None:
            self.series_file.close()
            self.series_file = None

    # -- phases to the workers ------------------------------------------------------------

    def phase_message(self) -> dict[str, Any]:
        assert self.phase is not None
        workers = self._worker_count()
        rate = self.phase.rate
        ramp = self.options.arrival_ramp_s if self.options else 0.0
        if ramp > 0:
            # Open loop ramped from zero over the run's first seconds, re-sent
            # every second: a piecewise-constant ramp.
            rate *= min(1.0, max(time.time() - self.started, 0.0) / ramp)
        return {
            "phase": self.phase.as_dict(),
            "rate_share": 1.0 / max(workers, 1),
            "run_id": self.run_id,
            "rate_now": rate,
        }

    def _worker_count(self) -> int:
        runner = self.environment.runner if self.environment is not None else None
        if runner is None or self.role != "master":
            return 1
        return max(1, len(runner.clients.ready) + len(runner.clients.running) + len(runner.clients.spawning))

    def broadcast(self) -> None:
        if self.phase is None or self.environment is None:
            return
        msg = self.phase_message()
        if self.role == "master" and self.environment.runner is not None:
            self.environment.runner.send_message(PHASE_MESSAGE, msg)
        else:
            self.follow(msg)

    def follow(self, msg: dict[str, Any]) -> None:
        """Worker (or local): adopt the phase the master runs."""
        self.phase = Phase(**msg["phase"])
        self.rate_share = float(msg.get("rate_share", 1.0))
        self.rate_now = float(msg.get("rate_now", self.phase.rate))
        self.run_id = msg.get("run_id", self.run_id)
        from loadtest.openloop import DISPATCHER

        if DISPATCHER is not None:
            DISPATCHER.set_rate(self.rate_now * self.rate_share)

    def _broadcast_loop(self) -> None:
        # Workers that join late, or miss a message, catch up within a second.
        while True:
            gevent.sleep(1.0)
            self.broadcast()
            self._check_workers()

    # -- collecting (master / local) -----------------------------------------------------

    def on_worker_report(self, worker: str, data: dict[str, Any]) -> None:
        blob = data.get("modelsoak")
        if not blob:
            return
        snap = unpack(blob)
        if snap.get("run_id") not in ("", self.run_id):
            return  # a report from an earlier run
        self.workers_seen[worker] = time.time()
        self.lost_workers.pop(worker, None)
        _recorder.decode_into(self.window, snap.pop("window", ""))
        self.snapshots[worker] = snap

    def merged(self) -> Merged:
        snaps = dict(self.snapshots)
        if self.role == "local":
            local = RECORDER.snapshot(take_window=False)
            snaps = {"local": local}
        return merge(snaps)

    def _check_workers(self) -> None:
        runner = self.environment.runner if self.environment is not None else None
        # Workers leave the runner's list when the run ends: only a running
        # test can lose one.
        if runner is None or self.role != "master" or runner.state not in ("spawning", "running"):
            return
        for client in runner.clients.values():
            if client.state == "missing" and client.id not in self.lost_workers:
                self.lost_workers[client.id] = time.time()
                log.error("worker %s went missing %.0f s into the run", client.id, time.time() - self.started)
        for worker in self.workers_seen:
            if worker not in runner.clients and worker not in self.lost_workers:
                self.lost_workers[worker] = time.time()
                log.error("worker %s is gone %.0f s into the run", worker, time.time() - self.started)

    def _series_loop(self) -> None:
        interval = self.options.series_interval if self.options else SERIES_INTERVAL_S
        while True:
            gevent.sleep(interval)
            try:
                self.write_point()
            except Exception:  # the run's data matters more than one point
                log.exception("writing a time-series point failed")

    def write_point(self) -> dict[str, Any]:
        if self.role == "local":
            _recorder.decode_into(self.window, RECORDER.snapshot()["window"])
        window, self.window = self.window, _recorder.new_hist()
        runner = self.environment.runner
        stats = runner.stats.total
        now = time.time()
        span = max(now - self.extra.get("last_point", self.started), 1e-3)
        self.extra["last_point"] = now
        point: dict[str, Any] = {
            "t": round(time.time() - self.started, 3),
            "phase": self.phase.name if self.phase else "",
            "users": runner.user_count,
            # successful requests measured in this interval (HDR counts), per second
            "rps": round(window.get_total_count() / span, 3),
            "fail_rps": round(stats.current_fail_per_sec, 3),
            "count": window.get_total_count(),
        }
        if window.get_total_count():
            for q in (50, 90, 95, 99):
                point[f"p{q}_ms"] = window.get_value_at_percentile(q) / 1000.0
        if self.watch is not None:
            mem = self.watch.poll()
            if mem:
                point["server_memory"] = mem
        if self.lost_workers:
            point["lost_workers"] = sorted(self.lost_workers)
        if self.series_file is not None:
            self.series_file.write(json.dumps(point) + "\n")
        return point


def _default_name(batch: int) -> str:
    return "infer" if batch == 1 else f"infer[bs={batch}]"


STATE = RunState()
