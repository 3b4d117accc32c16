"""`stream-sleep`: a streaming model with known timing and no model at all.

The first token of a request comes `ttft_ms` after the request arrived, token i
at `ttft_ms + i * itl_ms`: absolute deadlines on one clock, so a late wake-up
delays one token and never the ones after it. One timer thread serves every
stream (a heap of deadlines, woken by a condition variable with microsecond
timeouts; asyncio's own timers round the epoll timeout up to whole
milliseconds, which would add up to 1 ms of jitter to each token). Due tokens
are handed to the event loop in one call per wake-up, so hundreds of streams
cost one thread and a handful of loop callbacks per millisecond.

The hand-off from the timer thread to the loop takes time of its own (the
thread's wake-up, the loop's): ~0.15 ms on a small host, which alone is most of
2 % of a 10 ms gap. So the thread wakes that much early: a lead that follows
the median of the tokens' lateness as the loop sees it (one step up for each
token late, one down for each early), so half the tokens leave at most a few
microseconds before their deadline and half after, whatever the host.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time

from server.generation import Generation, GenerationEngine

WORDS = (b" lorem", b" ipsum", b" dolor", b" sit", b" amet", b" consectetur", b" adipiscing", b" elit")


# The lead's step per token and its bound (ns).
LEAD_STEP_NS = 2_000
LEAD_MAX_NS = 2_000_000


class _Timers:
    """Deadlines (perf_counter ns) of many streams, fired on the engine's loop."""

    def __init__(self, engine: StreamSleepEngine) -> None:
        self.engine = engine
        self.lead_ns = 0  # how early the thread wakes for a deadline (see the module docstring)
        self._heap: list[tuple[int, int, Generation]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="stream-sleep-timers", daemon=True)
        self._thread.start()

    def at(self, deadline_ns: int, gen: Generation) -> None:
        with self._cond:
            first = not self._heap or deadline_ns < self._heap[0][0]
            heapq.heappush(self._heap, (deadline_ns, next(self._order), gen))
            if first:
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        heap, cond = self._heap, self._cond
        while True:
            with cond:
                while not self._stopped:
                    now = time.perf_counter_ns() + self.lead_ns
                    if heap and heap[0][0] <= now:
                        break
                    cond.wait(None if not heap else (heap[0][0] - now) / 1e9)
                if self._stopped:
                    return
                due = []
                while heap and heap[0][0] <= now:
                    due.append(heapq.heappop(heap))
            loop = self.engine.loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self.engine.fire, due)


class StreamSleepEngine(GenerationEngine):
    """Tokens at known times (see the module docstring); temperature and seed are
    accepted and change nothing."""

    def __init__(self, name: str, ttft_ms: float, itl_ms: float, max_tokens: int, max_waiting: int) -> None:
        super().__init__(name, max_tokens, max_waiting)
        self.ttft_ns = int(ttft_ms * 1e6)
        self.itl_ns = int(itl_ms * 1e6)
        self._running = 0
        self._timers: _Timers | None = None

    def start(self) -> None:
        super().start()
        self._timers = _Timers(self)

    def shutdown(self) -> None:
        if self._timers is not None:
            self._timers.stop()

    def running(self) -> int:
        return self._running

    def waiting(self) -> int:
        return 0  # no slots to wait for

    def _enqueue(self, gen: Generation) -> None:
        assert self._timers is not None
        self._running += 1
        gen.started_ns = gen.request.arrived_ns
        self._timers.at(gen.request.arrived_ns + self.ttft_ns, gen)

    def fire(self, due: list[tuple[int, int, Generation]]) -> None:
        """On the loop: deliver the tokens whose deadlines passed, schedule the next."""
        timers = self._timers
        assert timers is not None
        now = time.perf_counter_ns()
        self.stats.step(len(due))
        lead = timers.lead_ns
        for deadline, _, gen in due:
            lead += LEAD_STEP_NS if now > deadline else -LEAD_STEP_NS
            if gen.cancelled:
                self._running -= 1
                gen.finish("cancelled", now)
                continue
            index = gen.generated
            if gen.emit(WORDS[index % len(WORDS)], len(due), 0, now):
                self._running -= 1
            else:
                timers.at(deadline + self.itl_ns, gen)
        timers.lead_ns = min(LEAD_MAX_NS, max(0, lead))
