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

Every scheduled send ends one of three ways, so that
`scheduled == measured + dropped + unfinished` holds: measured (a response or an
error came back), dropped (the pending queue was full), or unfinished (still
waiting for a user, or still in flight, when the run stopped). At the end the
schedule closes first (nothing is scheduled after it), the users get
`DRAIN_S` to finish what is queued and in flight, and what is left counts as
unfinished with its waiting time so far as a lower bound of its latency.
"""

from __future__ import annotations

import random
import time

import gevent
from gevent.queue import Empty, Queue

from loadtest.recorder import UNFINISHED, Recorder

__all__ = ["DRAIN_S", "LATE_AFTER_S", "UNFINISHED", "Dispatcher"]

# A dispatcher this far behind its schedule counts the send as late: well above
# the event loop's jitter under load (a few ms), well below a stall that would
# change the offered load.
LATE_AFTER_S = 0.050
# How long the users may finish queued and in-flight sends once the schedule has
# closed: enough for a server that keeps up, short enough not to stretch the run.
DRAIN_S = 2.0


# A scheduled send: when (time.monotonic) and the phase that scheduled it, so a
# send taken after a phase change is still its own phase's.
Ticket = tuple[float, str]


class Dispatcher:
    def __init__(self, recorder: Recorder, max_pending: int, arrival: str, seed: int) -> None:
        self.recorder = recorder
        self.tickets: Queue[Ticket] = Queue()
        self.label = ""  # the phase now scheduling
        self.max_pending = max_pending
        self.arrival = arrival
        self.rate = 0.0  # requests/s for this process
        self._rng = random.Random(seed)
        self._greenlet: gevent.Greenlet | None = None
        self.in_flight = 0  # tickets taken by users whose send has not ended
        # The schedule's end (time.monotonic), where the run's length is known
        # here: Locust's shape ticks once a second, and the run may stop later.
        self.until: float | None = None
        self.closed = False

    def set_rate(self, rate: float, label: str | None = None) -> None:
        self.rate = max(0.0, rate)
        if label is not None:
            self.label = label

    def start(self) -> None:
        if not self.closed and (self._greenlet is None or self._greenlet.dead):
            self._greenlet = gevent.spawn(self._run)

    def close(self) -> None:
        """The schedule ends now: nothing more is scheduled."""
        self.closed = True
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def drain(self, timeout_s: float = DRAIN_S) -> None:
        """Close the schedule and let the users finish what is queued and in
        flight, for at most `timeout_s`."""
        self.close()
        end = time.monotonic() + timeout_s
        while (self.tickets.qsize() or self.in_flight) and time.monotonic() < end:
            gevent.sleep(0.02)

    def stop(self) -> list[Ticket]:
        """Close the schedule; the tickets no user took."""
        self.close()
        left = []
        while True:
            try:
                left.append(self.tickets.get_nowait())
            except Empty:
                return left

    def take_backlog(self, fresh_s: float) -> list[Ticket]:
        """Queued sends older than `fresh_s`, out of the queue (loadtest.capacity.take_backlog)."""
        now = time.monotonic()
        old: list[Ticket] = []
        fresh: list[Ticket] = []
        while not self.tickets.empty():
            t = self.tickets.get_nowait()
            (fresh if now - t[0] < fresh_s else old).append(t)
        for t in fresh:
            self.tickets.put(t)
        return old

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
            if self.until is not None and next_at >= self.until:
                return  # the run's end: nothing is scheduled after it
            last = next_at
            behind = time.monotonic() - next_at
            if behind > LATE_AFTER_S:
                self.recorder.count_openloop("late")
            self.recorder.note_behind(behind)
            if self.tickets.qsize() >= self.max_pending:
                self.recorder.count_openloop("dropped")
                continue
            self.recorder.count_openloop("scheduled")
            self.tickets.put((next_at, self.label))

    def take(self, timeout: float = 0.5) -> Ticket | None:
        """A user's next scheduled send (its time.monotonic and phase), or
        None. The user reports the send's end with `ended`."""
        try:
            ticket = self.tickets.get(timeout=timeout)
        except Empty:
            return None
        self.in_flight += 1
        return ticket

    def ended(self, outcome: str) -> None:
        """A taken ticket's send ended: "measured" or "unfinished"."""
        self.in_flight -= 1
        self.recorder.count_openloop(outcome)
