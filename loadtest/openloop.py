"""Open-loop sending: requests scheduled at a target rate, latency measured from
the scheduled send time, so a slow server cannot slow the senders down and hide
its own latency (coordinated omission).

Each run has one dispatcher greenlet per process. At every scheduled instant it puts a
ticket (the scheduled time) into a queue; the users are the in-flight slots and
take tickets as they become free. A ticket that finds every slot busy waits
(its latency keeps counting from the scheduled time); once more than
`max_pending` tickets wait, new ones are dropped and counted. A dispatcher that
itself wakes up later than scheduled (the generator is short of CPU) counts the
send as late: late sends make the run invalid, because then the generator, not
the server, set the pace.
"""

from __future__ import annotations

import random
import time

import gevent
from gevent.queue import Empty, Queue

from loadtest.recorder import Recorder

# A dispatcher this far behind its schedule counts the send as late: well above
# the event loop's jitter under load (a few ms), well below a stall that would
# change the offered load.
LATE_AFTER_S = 0.050


class Dispatcher:
    def __init__(self, recorder: Recorder, max_pending: int, arrival: str, seed: int) -> None:
        self.recorder = recorder
        self.tickets: Queue[float] = Queue()
        self.max_pending = max_pending
        self.arrival = arrival
        self.rate = 0.0  # requests/s for this process
        self._rng = random.Random(seed)
        self._greenlet: gevent.Greenlet | None = None

    def set_rate(self, rate: float) -> None:
        self.rate = max(0.0, rate)

    def start(self) -> None:
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        while True:
            try:
                self.tickets.get_nowait()
            except Empty:
                break

    def _gap(self) -> float:
        if self.arrival == "poisson":
            return self._rng.expovariate(self.rate)
        return 1.0 / self.rate

    def _run(self) -> None:
        last = time.monotonic()
        while True:
            if self.rate <= 0:
                gevent.sleep(0.05)
                last = time.monotonic()
                continue
            rate = self.rate
            next_at = last + self._gap()
            # Sleep in short slices: when the rate changes (a ramp, a new
            # phase) the pending send is rescheduled at the new spacing.
            while (delay := next_at - time.monotonic()) > 0:
                gevent.sleep(min(delay, 0.1))
                if self.rate != rate:
                    rate = self.rate
                    if rate <= 0:
                        break
                    # The new spacing counts from the last send, but never
                    # from the past: a rescheduled send is not a late one.
                    next_at = max(last + self._gap(), time.monotonic())
            if self.rate <= 0:
                continue
            last = next_at
            behind = time.monotonic() - next_at
            if behind > LATE_AFTER_S:
                self.recorder.count_openloop("late")
            self.recorder.note_behind(behind)
            if self.tickets.qsize() >= self.max_pending:
                self.recorder.count_openloop("dropped")
                continue
            self.recorder.count_openloop("scheduled")
            self.tickets.put(next_at)

    def take(self, timeout: float = 0.5) -> float | None:
        """A user's next scheduled send time (time.monotonic), or None."""
        try:
            return self.tickets.get(timeout=timeout)
        except Empty:
            return None
