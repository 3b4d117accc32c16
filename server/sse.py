"""Writing a server-sent-event stream from the server's event loop.

A thread per streaming connection that wakes for every token would make
hundreds of streams hundreds of threads fighting for the GIL on every token.
So once a stream's headers are out, its connection thread hands the socket to
the loop: the generation's events (which arrive on the loop) are encoded and
sent there with `loop.sock_sendall`, batched while a send is in progress, and
the thread only waits for the end. TLS sockets stay with their thread (asyncio
cannot send on an `ssl.SSLSocket`).
"""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
from collections.abc import Callable

from server.generation import Event, FinishEvent, Generation, Sink


class Relay:
    """The sink a generation is started with: a queue read by the connection's
    thread until `to_loop` sends everything, from then on, to a LoopWriter."""

    def __init__(self) -> None:
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._target: Sink = self.events.put

    def __call__(self, event: Event) -> None:
        self._target(event)

    def to_loop(self, push: Sink) -> None:
        """On the loop: what the thread has not read yet goes first, in order."""
        while True:
            try:
                push(self.events.get_nowait())
            except queue.Empty:
                break
        self._target = push


class LoopWriter:
    """Sends one stream's encoded events on its socket, from the loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        encode: Callable[[Event], bytes],
        gen: Generation,
    ) -> None:
        self.loop, self.sock, self.encode, self.gen = loop, sock, encode, gen
        self.done = threading.Event()
        self.failed = False
        self.sent = 0  # events sent: progress the waiting thread can see
        self._pending: list[bytes] = []
        self._count = 0
        self._last = False
        self._sending = False

    def push(self, event: Event) -> None:
        """On the loop, as the generation's sink."""
        if self.failed:
            return
        self._pending.append(self.encode(event))
        self._count += 1
        self._last = self._last or isinstance(event, FinishEvent)
        if not self._sending and not self._send_now():
            self._sending = True
            self.loop.create_task(self._send())

    def _send_now(self) -> bool:
        """Sends what is pending at once if the socket takes it all (it nearly
        always does: a token is a few hundred bytes), sparing the loop a task and
        the token the wait for the loop's next turn; False leaves the rest to `_send`."""
        data = b"".join(self._pending)
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:  # the client went away
            self._pending.clear()
            self.failed = True
            self.gen.cancel()
            self.done.set()
            return True
        self._pending[:] = [data[n:]] if n < len(data) else []
        if self._pending:
            return False
        self.sent += self._count
        self._count = 0
        if self._last:
            self.done.set()
        return True

    async def _send(self) -> None:
        try:
            while self._pending:
                data, count = b"".join(self._pending), self._count
                self._pending.clear()
                self._count = 0
                await self.loop.sock_sendall(self.sock, data)
                self.sent += count
        except OSError:  # the client went away
            self.failed = True
            self.gen.cancel()
            self.done.set()
            return
        finally:
            self._sending = False
        if self._last:
            self.done.set()

    def wait(self, stall_s: float) -> bool:
        """In the connection's thread: True once everything is sent; False when the
        client went away, or nothing was sent for `stall_s` (then it is cancelled)."""
        seen = -1
        while not self.done.wait(stall_s):
            if self.sent == seen:
                self.gen.cancel()
                return False
            seen = self.sent
        return not self.failed
