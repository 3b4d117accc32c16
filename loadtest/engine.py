"""The request engine: a child process per load-generator process that makes the
closed-loop gRPC calls on a grpc.aio event loop, outside gevent.

A Locust worker is a gevent-patched process whose grpcio runs in gevent mode,
and there a sync call costs about twice the CPU of the same call made by
grpc.aio in a plain process (bench/client_cost.py measures both). So Locust's
users stay the concurrency -- each one an in-flight slot that the engine fills
back to back -- and record what comes back in batches (Locust's request
events, the HDR recorder, warm-up, requests_per_user: loadtest.user), while
the calls themselves run here (loadtest.engine_client is the other side).
grpc.aio on an OS thread of the Locust process was tried first: there the
first call hangs (likely because, under gevent's patched threading, the poller
thread grpc starts is a greenlet that the hub of the new thread never runs).

Messages are length-prefixed pickles between two processes of one run on one
host, the parent's own child: nothing else can write to the socket.

  parent -> engine  ("open", cid, address, secure, tls, timeout_s)
                    ("prep", cid, kind, request bytes)   kind: "kserve" | "torchserve"
                    ("run", cid, gen, limit, mode, batch) mode "closed": call back to back, the
                                                         results tagged `gen`, at most `limit`
                                                         calls for it (0: no limit); mode "open":
                                                         take the schedule's tickets (`batch`
                                                         comes back with each result)
                    ("halt", cid)                        the slot ends after its call
                    ("ol_start", sid, arrival, seed, max_pending, until, at)
                                                         a run's open-loop schedule (loadtest.engine_schedule)
                    ("ol_rate", sid, rate, label, at)    its rate from `at` (time.monotonic, as
                                                         `until`), and the phase scheduling
                    ("ol_close", sid)                    nothing scheduled from now on
                    ("ol_drain", sid, rid, timeout_s)    close; reply once nothing is queued or in flight
                    ("ol_backlog", sid, rid, fresh_s)    reply with the queued tickets older than fresh_s
                    ("ol_stop", sid, rid)                close; reply with what is queued or in flight
                    ("close", cid)
                    ("stream", 0, call_id, kind, address, tls, payload, timeout_s)
                                                         one streamed request (kind "kserve-stream":
                                                         the request's bytes; "openai": host, port,
                                                         path, body), loadtest.streaming_aio
  engine -> parent  ("ready", where, native, why)      once, when its imports are done: where its
                                                         calls are made (for the log), whether in C
                                                         (loadtest.engine_native), and if not, why
                    [(cid, gen, status, details, size, breakdown, call_ns, done), ...]
                    ("open", sid, [(batch, status, details, size, breakdown, call_ns, done,
                                    scheduled, label), ...])  the open loop's sends
                    ("ol", sid, counts, worst_behind_s)  the schedule's counts since the last
                    ("ol_reply", rid, [(scheduled, label), ...])
                    ("streams", [(call_id, outcome), ...])   outcome: streaming_aio.StreamOutcome
                    ("ticks", [late_s, ...])    the engine's own event-loop lag, about once a second:
                                                how late each LOOP_TICK_S sleep woke (the
                                                Locust process's self-watch counts them with its own)

A closed-loop slot backs off while the target refuses connections (as a
gevent user does: loadtest.user), so a dead target is not hammered.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import socket
import struct
import sys
import time
from typing import Any

import grpc

# Imported when the engine starts, not at its first call: it starts with its
# Locust process, and is ready before the first user is.
from loadtest import engine_native
from loadtest.engine_calls import METHODS, Conn, call_once, parse_outcome
from loadtest.engine_schedule import Schedule
from loadtest.protocols import GrpcError, backoff_s, unreachable
from loadtest.recorder import LOOP_TICK_S

HEADER = struct.Struct("<I")
# How long results wait to be sent in one batch: the parent only records them
# (the latency was measured here), so fewer, larger writes cost both sides less CPU.
SLOT_FLUSH_S = 0.02


def frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def unframe(buf: bytearray) -> list[Any]:
    """Whole messages off the front of `buf` (consumed); a partial one stays."""
    out = []
    at = 0
    while len(buf) - at >= HEADER.size:
        (n,) = HEADER.unpack_from(buf, at)
        if len(buf) - at - HEADER.size < n:
            break
        out.append(pickle.loads(buf[at + HEADER.size : at + HEADER.size + n]))
        at += HEADER.size + n
    del buf[:at]
    return out


class Engine:
    def __init__(self, sock: socket.socket, calls: str = "aio") -> None:
        self.sock = sock
        self.conns: dict[int, Conn] = {}
        self.slot_out: list[tuple[Any, ...]] = []
        # Streamed requests (op "stream"): their outcomes, and one channel per address.
        self.stream_out: list[tuple[int, Any]] = []
        self.stream_methods: dict[tuple[str, bool], Any] = {}
        self.http_pools: dict[tuple[str, int], Any] = {}  # OpenAI-compatible targets' connections
        self.tasks: set[asyncio.Task[None]] = set()
        self._stream_flush_pending = False
        self.loop = asyncio.get_running_loop()
        self._slot_flush_pending = False
        self.ticks_out: list[float] = []
        self.schedule: Schedule | None = None
        self.open_out: list[tuple[Any, ...]] = []
        self.replies: list[tuple[Any, ...]] = []
        self._watch_task = self.loop.create_task(self._watch())
        # Unary calls to plaintext targets in C (--client-engine auto or native), where it builds.
        self.native: engine_native.NativeSlots | None = None
        self.native_why = "not asked for (--client-engine process)"
        if calls in ("auto", "native"):
            native, self.native_why = engine_native.start()
            if native is not None:
                self.native = engine_native.NativeSlots(native, self.loop, self._native_closed)

    async def _watch(self) -> None:
        """How late a LOOP_TICK_S sleep wakes on this loop: the calls and their
        timing wait as long, so an engine short of CPU shows as a generator short
        of CPU, not as transport time."""
        per_second = round(1.0 / LOOP_TICK_S)
        while True:
            before = time.monotonic()
            await asyncio.sleep(LOOP_TICK_S)
            self.ticks_out.append(time.monotonic() - before - LOOP_TICK_S)
            if len(self.ticks_out) >= per_second:
                self._flush()

    async def serve(self) -> None:
        buf = bytearray()
        while True:
            try:
                data = await self.loop.sock_recv(self.sock, 1 << 16)
            except ConnectionError:
                data = b""
            if not data:
                return  # the parent is gone
            buf += data
            for msg in unframe(buf):
                self._handle(msg)

    def _handle(self, msg: tuple[Any, ...]) -> None:
        op, cid = msg[0], msg[1]
        if op == "stream":
            task = self.loop.create_task(self._stream(*msg[2:]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif op == "open":
            address, secure = msg[2], msg[3]
            where = engine_native.split_address(address) if self.native is not None and not secure else None
            self.conns[cid] = Conn(address, secure, msg[4], msg[5], native=where is not None)
            if self.native is not None and where is not None:
                self.native.open(cid, *where)
        elif op == "prep":
            conn = self.conns[cid]
            conn.prepare(msg[2], msg[3])
            if self.native is not None and conn.native:
                self.native.prepare(cid, METHODS[conn.kind], conn.request, conn.timeout_s)
        elif op == "run":
            self._run(cid, self.conns[cid], *msg[2:])
        elif op == "halt":
            conn = self.conns[cid]
            conn.halted = True
            conn.wake()
            if self.native is not None and conn.native:
                self.native.halt(cid)
        elif op == "close":
            gone = self.conns.pop(cid, None)
            if gone is not None:
                gone.halted = True
                gone.wake()
                if self.native is not None and gone.native:
                    self._set_open(gone, "closed")
                    self.native.close(cid)
                else:
                    self.loop.create_task(gone.channel.close())
        elif op.startswith("ol_"):
            self._schedule_op(op, cid, msg[2:])

    def _run(self, cid: int, conn: Conn, gen: int, left: int, mode: str, batch: int) -> None:
        conn.gen, conn.left, conn.halted = gen, left, False
        self._set_open(conn, mode)
        conn.mode, conn.batch = mode, batch
        conn.wake()
        if self.native is not None and conn.native and mode == "closed":
            self.native.run(cid, gen, left)  # back to back in C, results read in batches
        elif conn.slot is None or conn.slot.done():
            conn.slot = self.loop.create_task(self._slot(cid, conn))

    def _set_open(self, conn: Conn, mode: str) -> None:
        """The native client wakes the engine at once while any slot is in open loop."""
        if self.native is not None and conn.native and (conn.mode == "open") != (mode == "open"):
            self.native.set_open(1 if mode == "open" else -1)

    def _native_closed(self, cid: int, gen: int, status: str, details: str, body: bytes,
                       call_ns: int, done: float) -> None:  # fmt: skip
        """A closed-loop call the native client made: as a grpc.aio slot's result."""
        conn = self.conns.get(cid)
        if conn is None or self.native is None:
            return
        status, details, size, server = parse_outcome(conn.kind, status, details, body)
        self.slot_out.append((cid, gen, status, details, size, server, call_ns, done))
        self._flush_soon()
        if conn.gen == gen and conn.left:
            conn.left -= 1
        delay = self.native.backoff(cid, status, details)
        if delay and conn.gen == gen and not conn.halted and conn.mode == "closed":
            # The C loop stopped at the refusal: it goes on after the back-off.
            self.loop.call_later(delay, self._rearm, cid, conn, gen)

    def _rearm(self, cid: int, conn: Conn, gen: int) -> None:
        live = self.conns.get(cid) is conn and conn.gen == gen and not conn.halted and conn.mode == "closed"
        if self.native is not None and live:
            self.native.run(cid, gen, conn.left)

    def _schedule_op(self, op: str, sid: int, args: tuple[Any, ...]) -> None:
        """The open-loop schedule's orders (loadtest.engine_schedule)."""
        sched = self.schedule
        if op == "ol_start":
            if sched is not None:
                sched.stop()  # the last run's, if its stop never came
            self.schedule = Schedule(sid, *args)
            return
        if sched is None or sched.sid != sid:
            if op in ("ol_drain", "ol_backlog", "ol_stop"):
                self._reply(args[0], [])
            return
        if op == "ol_rate":
            sched.set_rate(*args)
        elif op == "ol_close":
            sched.close()
        elif op == "ol_backlog":
            self._reply(args[0], sched.backlog(args[1]))
        elif op == "ol_stop":
            self._reply(args[0], sched.stop())
        elif op == "ol_drain":
            sched.close()
            self.loop.create_task(self._drain(sched, args[0], args[1]))

    async def _drain(self, sched: Schedule, rid: int, timeout_s: float) -> None:
        """Answers once the closed schedule has nothing queued or in flight (or was
        stopped: a new run's start stops it), or after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sched.drained.wait(), timeout_s)
        self._reply(rid, [])

    def _reply(self, rid: int, payload: Any) -> None:
        """An answer the parent waits for: it leaves after every result before it."""
        self.replies.append(("ol_reply", rid, payload))
        self._flush()

    async def _stream(
        self, call_id: int, kind: str, address: str, tls: Any, payload: Any, timeout_s: float
    ) -> None:
        """One streamed request (loadtest.streaming_aio), its every token timed here;
        its outcome goes back at the end of this turn of the loop (its user waits for it)."""
        from loadtest import streaming_aio

        try:
            if kind == "openai":
                host, port, path, body = payload
                pool = self.http_pools.get((host, port))
                if pool is None:
                    pool = self.http_pools[(host, port)] = streaming_aio.HttpPool(host, port)
                outcome = await streaming_aio.openai_stream(pool, path, body, timeout_s)
            else:
                method = self.stream_methods.get((address, tls is not None))
                if method is None:
                    channel = (grpc.aio.secure_channel(address, tls.credentials(), options=tls.channel_options())
                               if tls is not None else grpc.aio.insecure_channel(address))  # fmt: skip
                    method = self.stream_methods[(address, tls is not None)] = streaming_aio.kserve_call(
                        channel
                    )
                outcome = await streaming_aio.kserve_stream(method, payload, timeout_s)
        except Exception as exc:  # any failure is the stream's, never the engine's
            outcome = ("UNKNOWN", f"{type(exc).__name__}: {exc}", 0, [], 0, 0, 0, False, 0, {}, [])
        self.stream_out.append((call_id, outcome))
        if not self._stream_flush_pending:
            self._stream_flush_pending = True
            self.loop.call_soon(self._flush)

    async def _slot(self, cid: int, conn: Conn) -> None:
        """A user's sends until halted: back to back (closed loop, until its limit
        is reached) or at the schedule's tickets (open loop)."""
        refusals = 0
        while not conn.halted:
            gen = conn.gen
            ticket = None
            if conn.mode == "open":
                sched = self.schedule
                if sched is None:
                    await asyncio.sleep(0.05)
                    continue
                ticket = await sched.take(conn)
                if ticket is None:
                    continue  # woken: halted, or its orders changed
            if self.native is not None and conn.native:
                if ticket is None:
                    return  # closed loop: it runs in C (_run)
                status, details, body, call_ns, done = await self.native.call(cid)
                status, details, size, server = parse_outcome(conn.kind, status, details, body)
            else:
                status, details, size, server, call_ns, done = await call_once(conn)
            if ticket is not None:
                if sched is not None and sched.finish(ticket[0]):  # else: reported unfinished at the stop
                    self.open_out.append((sched.sid, (conn.batch, status, details, size, server, call_ns,
                                                      done, ticket[1], ticket[2])))  # fmt: skip
                    self._flush_soon()
            else:
                self.slot_out.append((cid, gen, status, details, size, server, call_ns, done))
                self._flush_soon()
                if conn.gen == gen and conn.left:
                    conn.left -= 1
                    if not conn.left:
                        return  # this user's share of the phase is sent
            if status == "UNAVAILABLE" and unreachable(GrpcError(status, details)):
                refusals += 1
                await asyncio.sleep(backoff_s(refusals))
            else:
                refusals = 0

    def _flush_soon(self) -> None:
        if not self._slot_flush_pending:
            self._slot_flush_pending = True
            self.loop.call_later(SLOT_FLUSH_S, self._flush)

    def _flush(self) -> None:
        self._slot_flush_pending = self._stream_flush_pending = False
        slots, self.slot_out = self.slot_out, []
        streams, self.stream_out = self.stream_out, []
        ticks, self.ticks_out = self.ticks_out, []
        parts = [frame(slots)] if slots else []
        if streams:
            parts.append(frame(("streams", streams)))
        if ticks:
            parts.append(frame(("ticks", ticks)))
        parts.extend(self._open_frames())
        replies, self.replies = self.replies, []
        parts.extend(frame(r) for r in replies)  # after the results they follow
        if not parts:
            return
        data = b"".join(parts)
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):  # the parent is behind: wait for it (it reads in its own greenlet)
            self.sock.setblocking(True)
            try:
                self.sock.sendall(data[sent:])
            finally:
                self.sock.setblocking(False)


    def _open_frames(self) -> list[bytes]:
        """The open loop's results and the schedule's counts, by schedule."""
        out: list[bytes] = []
        if self.open_out:
            by_sid: dict[int, list[tuple[Any, ...]]] = {}
            for sid, r in self.open_out:
                by_sid.setdefault(sid, []).append(r)
            self.open_out = []
            out.extend(frame(("open", sid, rs)) for sid, rs in by_sid.items())
        counts = self.schedule.take_counts() if self.schedule is not None else None
        if counts is not None:
            out.append(frame(("ol", self.schedule.sid if self.schedule else 0, *counts)))
        return out


async def _main(fd: int, calls: str) -> None:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    engine = Engine(sock, calls)
    # Imports done: the parent's run may begin; and where the calls are made.
    where = engine_native.describe(engine.native, engine.native_why)
    sock.sendall(frame(("ready", where, engine.native is not None, engine.native_why)))
    await engine.serve()


def main() -> None:
    asyncio.run(_main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "aio"))


if __name__ == "__main__":
    main()
