"""The open loop when the request engine makes the calls: the run's side of the
schedule that runs on the engine's loop (loadtest.engine_schedule).

It has the interface of loadtest.openloop's Dispatcher that the run, the plugin
and the capacity search use (rate, close, drain, backlog, stop). The users are
the in-flight slots, held in the engine (loadtest.user); every result of the
schedule comes here, to the run, so a user that stops never loses one: the
run's accounting `scheduled == measured + dropped + unfinished` is kept here,
with what the engine scheduled, dropped and sent late.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

from loadtest.engine_client import engine_of
from loadtest.openloop import DRAIN_S, Ticket
from loadtest.protocols import GrpcError, unreachable

if TYPE_CHECKING:
    from locust.env import Environment

    from loadtest.recorder import Recorder
    from loadtest.warmup import Warmup

_sids = itertools.count(1)
# How long an answer from the engine may take beyond the work it was asked for.
ANSWER_S = 10.0


def account(environment: Environment, recorder: Recorder, name: str, batch: int, latency_ns: int,
            call_ns: int, status: str, exc: GrpcError | None, size: int,
            server: dict[str, int] | None) -> None:  # fmt: skip
    """One send's end: Locust's request event, and the run's recorder."""
    environment.events.request.fire(
        request_type="grpc",
        name=name,
        response_time=latency_ns / 1e6,
        response_length=size,
        exception=exc,
        context={},
    )
    if name != "warmup":
        recorder.record(name, latency_ns, status, batch, size, server, call_ns)


class EngineDispatcher:
    def __init__(self, environment: Environment, recorder: Recorder, warmup: Warmup,
                 max_pending: int, arrival: str, seed: int) -> None:  # fmt: skip
        self.environment = environment
        self.recorder = recorder
        self.warmup = warmup
        self.max_pending = max_pending
        self.arrival = arrival
        self.seed = seed
        self.sid = next(_sids)
        self.rate = 0.0
        self.label = ""
        self.until: float | None = None  # the schedule's end (time.monotonic), set before start
        self.closed = False
        self.started = False

    def set_rate(self, rate: float, label: str | None = None) -> None:
        self.rate = max(0.0, rate)
        if label is not None:
            self.label = label
        if self.started and not self.closed:
            engine_of(self.environment).send(("ol_rate", self.sid, self.rate, self.label, time.monotonic()))

    def start(self) -> None:
        if self.started or self.closed:
            return
        engine = engine_of(self.environment)
        engine.open_sinks[self.sid] = self._receive
        now = time.monotonic()
        engine.send(("ol_start", self.sid, self.arrival, self.seed, self.max_pending, self.until, now))
        self.started = True
        engine.send(("ol_rate", self.sid, self.rate, self.label, now))

    def close(self) -> None:
        """The schedule ends now: nothing more is scheduled."""
        if self.started and not self.closed:
            engine_of(self.environment).send(("ol_close", self.sid))
        self.closed = True

    def drain(self, timeout_s: float = DRAIN_S) -> None:
        """Close the schedule and let the slots finish what is queued and in
        flight, for at most `timeout_s`."""
        if self.started and not self.closed:
            engine_of(self.environment).ask("ol_drain", self.sid, timeout_s, timeout_s=timeout_s + ANSWER_S)
        self.closed = True

    def take_backlog(self, fresh_s: float) -> list[Ticket]:
        """Queued sends older than `fresh_s` (loadtest.capacity.take_backlog)."""
        if not self.started:
            return []
        left = engine_of(self.environment).ask("ol_backlog", self.sid, fresh_s, timeout_s=ANSWER_S)
        return list(left or [])

    def stop(self) -> list[Ticket]:
        """Close the schedule; what is queued or in flight, now unfinished."""
        self.closed = True
        if not self.started:
            return []
        engine = engine_of(self.environment)
        left = engine.ask("ol_stop", self.sid, timeout_s=ANSWER_S)
        engine.open_sinks.pop(self.sid, None)
        self.started = False
        return list(left or [])

    def _receive(self, kind: str, payload: tuple[Any, ...]) -> None:
        if kind == "ol":
            counts, worst_s = payload
            self.recorder.note_behind_counts(counts, worst_s)
            return
        (results,) = payload
        now = time.time()
        for batch, status, details, size, server, call_ns, done, scheduled, label in results:
            name = label or self.label
            if self.warmup.take():  # per run, not per user (loadtest.warmup)
                name = "warmup"
                self.recorder.count_openloop("warmup")  # measured, outside the statistics
            exc = None if status == "OK" else GrpcError(status, details)
            # From the scheduled send time: waiting for a free slot counts.
            latency_ns = max(int((done - scheduled) * 1e9), call_ns)
            account(self.environment, self.recorder, name, batch, latency_ns, call_ns, status, exc, size, server)
            self.recorder.count_openloop("measured")
            if unreachable(exc):
                self.recorder.note_unreachable(now)
