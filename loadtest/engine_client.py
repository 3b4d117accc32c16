"""The gevent side of the request engine (loadtest.engine): one engine child per
load-generator process, started when the process starts, and a client per user.

In closed loop a user's slot runs in the engine (`run_slot`): the engine
calls back to back and streams the results, which one greenlet reads in
batches and hands to the user's `on_results` (recording, Locust's request
events). The messages of every user in one turn of the gevent loop leave in
one write. In open loop a user calls through its local client (`local`), on
gevent's loop with the dispatcher that schedules the sends.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import gevent
import gevent.event
from gevent.event import AsyncResult

from loadtest.engine import frame, unframe
from loadtest.protocols import GrpcError, KServeClient, Target, TorchServeClient, grpc_target
from loadtest.streaming import COUNTED, FROM_USAGE, KServeStreamClient, OpenAIClient, StreamResult
from loadtest.tls import ClientTls

if TYPE_CHECKING:
    import numpy as np
    from locust.env import Environment

    from loadtest.options import Options
    from loadtest.streaming_aio import StreamOutcome
    from loadtest.workload import Prompt

log = logging.getLogger("modelsoak.loadgen")
ENGINE_FD = 3  # the socket's descriptor number in the engine
_ATTR = "_modelsoak_engine"
# --client-engine -> how the engine makes unary calls (loadtest.engine: "auto" is
# in C where the native client builds, else grpc.aio).
ENGINE_CALLS = {"auto": "auto", "native": "native", "process": "aio"}
_TICKS_ATTR = "_modelsoak_engine_ticks"
# A closed-loop slot's result: generation, status, details, size, breakdown, call ns, when it ended.
SlotResult = tuple[int, str, str, int, "dict[str, int] | None", int, float]


class EngineProcess:
    """The child and the socket to it; every user of this process shares it."""

    def __init__(self, tick_sink: Callable[[], Callable[[float], None] | None] = lambda: None,
                 calls: str = "auto") -> None:  # fmt: skip
        parent, child = socket.socketpair()
        self._tick_sink = tick_sink  # where the engine's loop lag goes (the run's self-watch), if anywhere
        self.sock = parent
        self.slots: dict[int, Callable[[list[SlotResult]], None]] = {}
        self.waiting: dict[int, AsyncResult] = {}  # streamed requests by call id
        self._ids = itertools.count(1)
        self._out: list[bytes] = []
        self._cids = itertools.count(1)
        self._flush_queued = False
        self.dead = False
        self._child = child
        # The open loop's side (loadtest.engine_dispatch): its results and the
        # schedule's counts go to the dispatcher of the schedule they name.
        self.ready = gevent.event.Event()  # set when the engine has started (its "ready")
        self.calls = calls  # "auto" | "native" | "aio": how the engine makes unary calls
        self.native = False  # whether its unary calls are made in C (from its "ready")
        self.where = ""  # where they are made, in words
        self.why = ""  # why not in C, where they are not
        self.open_sinks: dict[int, Callable[[str, Any], None]] = {}
        self.replies: dict[int, AsyncResult] = {}
        self.pid = 0

    def start(self) -> None:
        # Made before it starts: every user that comes meanwhile finds this one.
        child = self._child
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
        }
        # posix_spawn, not fork: a forked copy of this process runs grpc's fork
        # handlers, whose poller can die on the descriptors closed before exec.
        self.pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-m", "loadtest.engine", str(ENGINE_FD), self.calls],
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, child.fileno(), ENGINE_FD)],
        )
        child.close()
        self._reader = gevent.spawn(self._read)
        log.info("request engine started (pid %d): this process's calls and streams are made there", self.pid)

    def new_cid(self) -> int:
        return next(self._cids)

    def send(self, msg: tuple[Any, ...]) -> None:
        self._out.append(frame(msg))
        if not self._flush_queued:
            # Every message queued in this turn of the loop leaves in one write.
            self._flush_queued = True
            gevent.get_hub().loop.run_callback(self._flush)

    def _flush(self) -> None:
        self._flush_queued = False
        data, self._out = b"".join(self._out), []
        if data and not self.dead:
            try:
                self.sock.sendall(data)
            except OSError:
                self._gone()

    def stream(
        self, kind: str, address: str, tls: ClientTls | None, payload: Any, timeout_s: float
    ) -> StreamOutcome:
        """One streamed request made by the engine (loadtest.streaming_aio)."""
        if self.dead:
            raise GrpcError("UNAVAILABLE", "the request engine process ended")
        call_id = next(self._ids)
        waiter = self.waiting[call_id] = AsyncResult()
        self.send(("stream", 0, call_id, kind, address, tls, payload, timeout_s))
        try:
            return cast("StreamOutcome", waiter.get())
        finally:
            self.waiting.pop(call_id, None)

    def _read(self) -> None:
        buf = bytearray()
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                self._gone()
                return
            buf += data
            for msg in unframe(buf):
                if isinstance(msg, tuple) and msg[0] == "ready":
                    self.native, self.where, self.why = bool(msg[2]), str(msg[1]), str(msg[3])
                    log.info("request engine (pid %d): %s", self.pid, msg[1])
                    self.ready.set()
                elif isinstance(msg, tuple) and msg[0] == "ticks":
                    sink = self._tick_sink()
                    if sink is not None:
                        for late in msg[1]:
                            sink(late)
                elif isinstance(msg, tuple) and msg[0] in ("open", "ol"):
                    open_sink = self.open_sinks.get(msg[1])
                    if open_sink is not None:  # None: a run's schedule that has ended
                        open_sink(msg[0], msg[2:])
                elif isinstance(msg, tuple) and msg[0] == "ol_reply":
                    waiter = self.replies.pop(msg[1], None)
                    if waiter is not None:
                        waiter.set(msg[2])
                elif isinstance(msg, tuple) and msg[0] == "streams":
                    for call_id, outcome in msg[1]:
                        waiter = self.waiting.get(call_id)
                        if waiter is not None:  # None: its user stopped waiting (killed at the run's end)
                            waiter.set(outcome)
                else:
                    self._deliver(msg)

    def ask(self, op: str, sid: int, *args: Any, timeout_s: float = 10.0) -> Any:
        """An order the engine answers (loadtest.engine: "ol_drain", "ol_backlog",
        "ol_stop"); None when the engine is gone or does not answer in time."""
        if self.dead:
            return None
        rid = next(self._ids)
        waiter = self.replies[rid] = AsyncResult()
        self.send((op, sid, rid, *args))
        try:
            return waiter.get(timeout=timeout_s)
        except gevent.Timeout:
            log.error("the request engine did not answer %s in %.0f s", op, timeout_s)
            return None
        finally:
            self.replies.pop(rid, None)

    def _deliver(self, slots: list[tuple[Any, ...]]) -> None:
        by_cid: dict[int, list[SlotResult]] = defaultdict(list)
        for r in slots:
            by_cid[r[0]].append(r[1:])
        for cid, results in by_cid.items():
            handler = self.slots.get(cid)
            if handler is not None:
                try:
                    handler(results)
                except Exception:  # one user's bookkeeping must not end every user's results
                    log.exception("recording the engine's results")

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether the engine has started (imports done) within `timeout_s`."""
        return bool(self.ready.wait(timeout_s)) and not self.dead

    def _gone(self) -> None:
        self.ready.set()  # nobody waits for an engine that has ended
        if not self.dead:
            self.dead = True
            log.error("the request engine process ended (exit %s)", self._reap())
        for waiter in list(self.waiting.values()):
            waiter.set_exception(GrpcError("UNAVAILABLE", "the request engine process ended"))
        for waiter in list(self.replies.values()):
            waiter.set(None)

    def close(self) -> None:
        self.dead = True
        self.sock.close()
        # It ends on its own once its socket closes; this only reaps it.
        end = time.monotonic() + 5.0
        while self.pid and self._reap() is None and time.monotonic() < end:
            gevent.sleep(0.02)
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            self._reap()

    def _reap(self) -> int | None:
        """The child's exit status once it has ended (None while it runs)."""
        if not self.pid:
            return None
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 0  # reaped elsewhere
        if pid == 0:
            return None
        self.pid = 0
        return os.waitstatus_to_exitcode(status)


def engine_of(environment: Environment) -> EngineProcess:
    """This process's engine, started at the first call."""
    engine: EngineProcess | None = getattr(environment, _ATTR, None)
    if engine is None or engine.dead:
        parsed = environment.parsed_options
        calls = ENGINE_CALLS.get(str(getattr(parsed, "client_engine", "auto")), "auto")
        engine = EngineProcess(lambda: getattr(environment, _TICKS_ATTR, None), calls)
        setattr(environment, _ATTR, engine)
        engine.start()
    return engine


def watch_engine_loop(environment: Environment, tick: Callable[[float], None]) -> None:
    """The engine's event-loop lag goes to `tick` (the run's self-watch), as the
    Locust process's own does."""
    setattr(environment, _TICKS_ATTR, tick)


def engine_pid(environment: Environment) -> int:
    """The pid of this process's engine, 0 when it has none."""
    engine: EngineProcess | None = getattr(environment, _ATTR, None)
    return engine.pid if engine is not None and not engine.dead else 0


def close_engine(environment: Environment) -> None:
    engine: EngineProcess | None = getattr(environment, _ATTR, None)
    if engine is not None:
        engine.close()
        setattr(environment, _ATTR, None)


class EngineClient:
    """A user's client whose calls the engine makes. Requests are built by the
    local client (one serialization per target), sent as bytes."""

    def __init__(self, environment: Environment, local: KServeClient | TorchServeClient, host: str,
                 timeout_s: float, tls: ClientTls) -> None:  # fmt: skip
        self.local = local
        self.kind = "torchserve" if isinstance(local, TorchServeClient) else "kserve"
        self.environment = environment
        address, secure = grpc_target(host)
        self._open = ("open", 0, address, secure, tls if secure else None, timeout_s)
        self._prep: bytes | None = None
        self._connect()

    def _connect(self) -> None:
        self.engine = engine_of(self.environment)
        self.cid = self.engine.new_cid()
        self.engine.send((self._open[0], self.cid, *self._open[2:]))
        if self._prep is not None:
            self.engine.send(("prep", self.cid, self.kind, self._prep))

    def prepare(self, target: Target, arrays: dict[str, np.ndarray]) -> None:
        self.local.prepare(target, arrays)
        request = self.local._request
        assert request is not None
        self._prep = request.SerializeToString()
        self.engine.send(("prep", self.cid, self.kind, self._prep))

    def run_slot(self, gen: int, limit: int, on_results: Callable[[list[SlotResult]], None],
                 mode: str = "closed", batch: int = 0) -> None:  # fmt: skip
        """Closed loop: the engine sends back to back for this user, results tagged
        `gen` and handed to `on_results` in batches; at most `limit` (0: no limit).
        Open loop (`mode` "open"): the user is a slot that takes the engine's
        schedule's tickets, and the results go to the run's dispatcher
        (loadtest.engine_dispatch), which accounts for every ticket."""
        if self.engine.dead:
            self._connect()
        self.engine.slots[self.cid] = on_results
        self.engine.send(("run", self.cid, gen, limit, mode, batch))

    def halt(self) -> None:
        """The closed loop ends after the call in flight (whose result still comes)."""
        if not self.engine.dead:
            self.engine.send(("halt", self.cid))

    def close(self) -> None:
        self.engine.slots.pop(self.cid, None)
        if not self.engine.dead:
            self.engine.send(("close", self.cid))
        self.local.close()


class EngineStreamer:
    """A user's streaming client whose streams the engine reads: the local client
    (loadtest.streaming) resolves the target and builds each request; the engine
    sends it and times every token as it arrives, on a loop with nothing else to
    do (under gevent a token is read through gevent's thread pool and waits for
    the Locust process: bench/streams.py measures both)."""

    def __init__(
        self, environment: Environment, local: OpenAIClient | KServeStreamClient, opts: Options
    ) -> None:
        self.environment = environment
        self.local = local
        self.timeout_s = opts.request_timeout
        if isinstance(local, OpenAIClient):
            self.kind, self.address, self.tls = "openai", "", None
        else:
            address, secure = grpc_target(opts.host)
            self.kind, self.address, self.tls = "kserve-stream", address, opts.tls if secure else None

    @classmethod
    def wrap(cls, environment: Environment, local: OpenAIClient | KServeStreamClient,
             opts: Options) -> OpenAIClient | KServeStreamClient | EngineStreamer:  # fmt: skip
        """The engine's streamer, except over HTTPS (which the engine does not speak: the local client reads it)."""
        if isinstance(local, OpenAIClient) and local.scheme == "https":
            return local
        return cls(environment, local, opts)

    def resolve(self, model: str) -> str:
        """KServe: the inputs the model declares (each request is built from them)."""
        return self.local.resolve(model)

    def stream(self, model: str, prompt: Prompt, seed: int) -> StreamResult:
        if isinstance(self.local, OpenAIClient):
            c = self.local
            path = c.base + ("/chat/completions" if c.endpoint == "chat" else "/completions")
            payload: Any = (c.hostname, c.port, path, json.dumps(c.body(model, prompt, seed)).encode())
        else:
            payload = self.local.request(model, prompt, seed).SerializeToString()
        outcome = engine_of(self.environment).stream(
            self.kind, self.address, self.tls, payload, self.timeout_s
        )
        status, details, ttft, itl, e2e, prompt_tokens, output_tokens, from_usage, size, server_ns, added = outcome
        if status != "OK":
            raise GrpcError(status, details)
        return StreamResult(ttft, itl, e2e, prompt_tokens, output_tokens, FROM_USAGE if from_usage else COUNTED,
                            size, server_ns, added)  # fmt: skip

    def close(self) -> None:
        self.local.close()
