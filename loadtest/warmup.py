"""Warm-up, defined per run: the requests sent in the run's first `--warmup-s`
seconds, and the run's first `--warmup-requests` requests across all workers,
are sent and answered but left out of the statistics -- the same in open and
closed loop, whatever the number of users.

The master measures the time: every phase message tells the workers how much
of the warm-up window is left (a worker that joins late, or whose clock
differs, still ends it when the master does). The request count is split
between the workers by their Locust index, so the shares add up to the count
asked for. Each process counts what it left out; the master's summary adds the
counts up (`excluded`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from loadtest.results import WarmupResult

if TYPE_CHECKING:
    from loadtest.recorder import Recorder

# The request name Locust's own statistics show for warm-up sends.
WARMUP = "warmup"
# The recorder's counter of requests left out as warm-up (both loops; the
# open-loop "warmup" counter keeps counting open-loop sends only).
EXCLUDED = "warmup_excluded"


def share_of(requests: int, workers: int, index: int) -> int:
    """Worker `index`'s part of `requests` split over `workers`: the parts add up to `requests`."""
    workers = max(workers, 1)
    base, extra = divmod(max(requests, 0), workers)
    return base + (1 if index % workers < extra else 0)


class Warmup:
    """One process's warm-up for one run."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.requests = 0  # the run's count, all workers together
        self.workers = 1
        self.index = 0
        self.until: float | None = None  # monotonic end of the time window (None: not known yet)
        self.quota: int | None = None  # this process's share of `requests`, fixed at its first send
        self.taken = 0
        self._lock = threading.Lock()

    def follow(self, seconds_left: float, requests: int, rate_share: float, index: int) -> None:
        """The master's word, every second: what is left of the time window,
        the run's request count, this worker's share and index."""
        self.until = time.monotonic() + max(seconds_left, 0.0)
        self.requests = requests
        self.workers = max(1, round(1.0 / rate_share)) if rate_share > 0 else 1
        self.index = index

    def take(self) -> bool:
        """True when the request about to be sent is warm-up (and counts it)."""
        with self._lock:
            if self.quota is None:
                self.quota = share_of(self.requests, self.workers, self.index)
            if self.taken < self.quota:
                self.taken += 1
            elif self.until is None or time.monotonic() >= self.until:
                return False
        self.recorder.count_openloop(EXCLUDED)
        return True


def summary_of(seconds: float, requests: int, counters: Mapping[str, int]) -> WarmupResult:
    return WarmupResult(seconds=seconds, requests=requests, excluded=int(counters.get(EXCLUDED, 0)))


def describe(w: WarmupResult | None) -> str:
    """One sentence for the report and the verdict: what was left out, and why."""
    if w is None:
        return ""
    asked = []
    if w.requests:
        asked.append(f"the run's first {w.requests} requests (all workers together)")
    if w.seconds:
        asked.append(f"every request sent in its first {w.seconds:g} s")
    if not asked:
        return "Warm-up: none asked for; every request is in the statistics"
    return f"Warm-up: {w.excluded} requests left out of the statistics: " + " and ".join(asked)
