"""The open-loop schedule on the request engine's own loop (loadtest.engine).

The same schedule as loadtest.openloop's dispatcher -- tickets at a target
rate (constant or Poisson), a bounded pending queue, late sends counted, the
schedule's end, the run's drain, the step's backlog -- but on the asyncio loop
that also makes the calls, so a ticket reaches a free slot without a hand-off
between processes, and the schedule's lag is this loop's, not gevent's.

The parent's run owns the accounting: the engine counts what it scheduled,
dropped and sent late (shipped in batches, like the results), the parent counts
what was measured, and what is queued or in flight when the schedule stops comes
back to the parent as unfinished. A ticket reported unfinished never reports a
result afterwards, so each scheduled send is counted exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter, deque
from typing import Any

from loadtest.recorder import lag_key

# Kept equal to loadtest.openloop's (that module imports gevent, which the engine does not).
LATE_AFTER_S = 0.050
# A ticket: its id, when it was scheduled (time.monotonic, shared by every
# process of the host), and the phase that scheduled it.
Ticket = tuple[int, float, str]


class Schedule:
    def __init__(self, sid: int, arrival: str, seed: int, max_pending: int, until: float | None,
                 at: float) -> None:  # fmt: skip
        self.sid = sid  # the parent's dispatcher this schedule belongs to (one per run)
        self.arrival = arrival
        self.max_pending = max_pending
        self.until = until
        self.rate = 0.0
        self.label = ""
        # When the rate last went up from zero, by the parent's clock: the schedule
        # counts from the moment the run asked for it, not from when this loop heard,
        # so a late engine shows as sends behind their schedule.
        self.since = at
        self.closed = False
        self.counts: Counter[str] = Counter()  # scheduled, dropped, late, lag buckets: not shipped yet
        self.max_behind_s = 0.0
        self.queue: deque[Ticket] = deque()
        self.waiters: deque[asyncio.Future[Ticket | None]] = deque()
        self.in_flight: dict[int, Ticket] = {}
        self._ids = itertools.count(1)
        self._rng = random.Random(seed)
        self._changed = asyncio.Event()
        self.drained = asyncio.Event()  # set once closed with nothing queued or in flight
        self._task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(self._run())

    def set_rate(self, rate: float, label: str, at: float) -> None:
        if self.rate <= 0 < rate:
            self.since = at
        self.rate = max(0.0, rate)
        if label:
            self.label = label
        self._changed.set()

    def close(self) -> None:
        """Nothing is scheduled from now on."""
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._note_drained()

    def _note_drained(self) -> None:
        if self.closed and self.idle():
            self.drained.set()

    def _gap(self) -> float:
        if self.arrival == "poisson":
            return self._rng.expovariate(self.rate)
        return 1.0 / self.rate

    async def _wait(self, delay: float | None) -> None:
        """Until `delay` passes or the rate changes, whichever comes first."""
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), delay)

    async def _run(self) -> None:
        while self.rate <= 0:
            await self._wait(None)
        last = self.since
        while True:
            if self.rate <= 0:
                await self._wait(None)
                last = self.since
                continue
            rate = self.rate
            next_at = last + self._gap()
            while (delay := next_at - time.monotonic()) > 0:
                await self._wait(delay)
                if self.rate != rate:
                    rate = self.rate
                    if rate <= 0:
                        break
                    # The new spacing counts from the last send, never from the past:
                    # a rescheduled send is not a late one.
                    next_at = max(last + self._gap(), time.monotonic())
            if self.rate <= 0:
                continue
            if self.until is not None and next_at >= self.until:
                return  # the run's end: nothing is scheduled after it
            last = next_at
            behind = time.monotonic() - next_at
            if behind > LATE_AFTER_S:
                self.counts["late"] += 1
            self.counts[lag_key(behind)] += 1
            self.max_behind_s = max(self.max_behind_s, behind)
            if len(self.queue) >= self.max_pending:
                self.counts["dropped"] += 1
                continue
            self.counts["scheduled"] += 1
            self._put((next(self._ids), next_at, self.label))

    def _put(self, ticket: Ticket) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():  # done: its slot was woken for something else
                self.in_flight[ticket[0]] = ticket
                waiter.set_result(ticket)
                return
        self.queue.append(ticket)

    async def take(self, slot: Any) -> Ticket | None:
        """The next ticket, taken into flight; None when `slot` is woken (halted,
        or switched to the closed loop) before one comes."""
        if self.queue:
            ticket = self.queue.popleft()
            self.in_flight[ticket[0]] = ticket
            return ticket
        waiter: asyncio.Future[Ticket | None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        slot.waiter = waiter
        try:
            return await waiter
        finally:
            slot.waiter = None

    def finish(self, tid: int) -> bool:
        """A taken ticket's send ended: True if it is still this schedule's to
        report (False once the stop has reported it unfinished)."""
        mine = self.in_flight.pop(tid, None) is not None
        self._note_drained()
        return mine

    def idle(self) -> bool:
        return not self.queue and not self.in_flight

    def backlog(self, fresh_s: float) -> list[tuple[float, str]]:
        """Queued tickets older than `fresh_s`, out of the queue (a capacity step's
        backlog at its end); fresher ones stay for the users about to take them."""
        now = time.monotonic()
        old = [t for t in self.queue if now - t[1] >= fresh_s]
        self.queue = deque(t for t in self.queue if now - t[1] < fresh_s)
        self._note_drained()
        return [(t[1], t[2]) for t in old]

    def stop(self) -> list[tuple[float, str]]:
        """Close the schedule: every ticket queued or in flight, now unfinished."""
        self.close()
        left = [(t[1], t[2]) for t in (*self.queue, *self.in_flight.values())]
        self.queue.clear()
        self.in_flight.clear()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()
        self.drained.set()
        return left

    def take_counts(self) -> tuple[dict[str, int], float] | None:
        """The counts since the last call and the worst lag, or None if nothing was counted."""
        if not self.counts:
            return None
        counts, self.counts = dict(self.counts), Counter()
        behind, self.max_behind_s = self.max_behind_s, 0.0
        return counts, behind
