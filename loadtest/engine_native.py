"""The request engine's calls made in C (loadtest.native_client): the slots of
plaintext gRPC targets, where the engine has the native client.

In closed loop the C thread makes a slot's calls back to back by itself and
the engine only reads what finished, in batches (`notify delay`): no Python
runs per call but the parsing of its response. In open loop each ticket is one
call, and the slot waits for its end (no notify delay then: a slot freed late
would queue the next ticket and inflate its latency). While the target refuses
connections the C loop stops after reporting; the engine re-arms it after a
jittered back-off, as a grpc.aio slot waits.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from loadtest.native_client import NativeCalls, NativeError
from loadtest.protocols import GrpcError, backoff_s, unreachable

if TYPE_CHECKING:
    from collections.abc import Callable

# The tag of an open-loop call (closed-loop calls carry their generation, >= 1).
OPEN_TAG = -1
# How long finished closed-loop calls may wait in C before the engine is woken: the
# engine forwards results every 20 ms anyway (loadtest.engine.SLOT_FLUSH_S).
NOTIFY_DELAY_S = 0.005

# A call's end: status, details, response message, call ns, when it ended (time.monotonic).
Outcome = tuple[str, str, bytes, int, float]


def start() -> tuple[NativeCalls | None, str]:
    """The native client, or None and why it cannot be had here."""
    try:
        return NativeCalls(NOTIFY_DELAY_S), ""
    except (NativeError, OSError) as exc:
        return None, str(exc)


def split_address(address: str) -> tuple[str, int] | None:
    """host and port of 'host:port' or '[v6]:port'; None if it is not that."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class NativeSlots:
    """Every native slot of one engine: their orders, and the routing of results."""

    def __init__(self, calls: NativeCalls, loop: asyncio.AbstractEventLoop,
                 on_closed: Callable[[int, int, str, str, bytes, int, float], None]) -> None:  # fmt: skip
        self.calls = calls
        self.loop = loop
        self.on_closed = on_closed  # (cid, gen, status, details, body, call_ns, done)
        self.futures: dict[int, asyncio.Future[Outcome]] = {}  # open-loop calls in flight, by slot
        self.refusals: dict[int, int] = {}
        self.open_slots = 0  # slots in open loop: while any are, results wake the engine at once
        loop.add_reader(calls.fileno(), self._ready)

    def open(self, cid: int, host: str, port: int) -> None:
        self.calls.open(cid, host, port)

    def prepare(self, cid: int, path: str, request: bytes, timeout_s: float) -> None:
        self.calls.prepare(cid, path, request, timeout_s)

    def run(self, cid: int, gen: int, limit: int) -> None:
        """Closed loop: `limit` calls back to back (0: until halted)."""
        self.calls.run(cid, gen, limit)

    def halt(self, cid: int) -> None:
        self.calls.halt(cid)

    def close(self, cid: int) -> None:
        self.calls.close(cid)
        fut = self.futures.pop(cid, None)
        if fut is not None and not fut.done():
            fut.set_result(("CANCELLED", "the slot was closed", b"", 0, self.loop.time()))

    def set_open(self, delta: int) -> None:
        """A slot entered (+1) or left (-1) the open loop."""
        before = self.open_slots
        self.open_slots = max(0, before + delta)
        if (before == 0) != (self.open_slots == 0):
            self.calls.set_notify_delay(0.0 if self.open_slots else NOTIFY_DELAY_S)

    async def call(self, cid: int) -> Outcome:
        """One open-loop call on the slot, awaited."""
        fut: asyncio.Future[Outcome] = self.loop.create_future()
        self.futures[cid] = fut
        self.calls.run(cid, OPEN_TAG, 1)
        try:
            return await fut
        finally:
            self.futures.pop(cid, None)

    def backoff(self, cid: int, status: str, details: str) -> float:
        """Seconds to wait before the slot's next call: 0 unless the target refused it."""
        if status == "UNAVAILABLE" and unreachable(GrpcError(status, details)):
            self.refusals[cid] = self.refusals.get(cid, 0) + 1
            return backoff_s(self.refusals[cid])
        self.refusals.pop(cid, None)
        return 0.0

    def _ready(self) -> None:
        for cid, status, tag, call_ns, done, details, body in self.calls.results():
            if tag == OPEN_TAG:
                fut = self.futures.get(cid)
                if fut is not None and not fut.done():
                    fut.set_result((status, details, body, call_ns, done))
            else:
                self.on_closed(cid, tag, status, details, body, call_ns, done)

    def free(self) -> None:
        self.loop.remove_reader(self.calls.fileno())
        self.calls.free()


def describe(native: Any, why: str) -> str:
    """Where the engine's calls are made, for the log."""
    if native is not None:
        return "unary calls in C over libnghttp2 (loadtest.native_client), TLS and streams on grpc.aio"
    return f"calls on grpc.aio (the native client is unavailable: {why})"
