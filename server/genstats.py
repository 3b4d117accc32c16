"""Statistics of a streaming model: token counts and TTFT / ITL / E2E histograms.

Recorded on the server's loop as events are delivered, read by the Prometheus
collector on scrape (another thread), hence the lock.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

import numpy as np

from server.stats import BATCH_BUCKETS, LATENCY_BUCKETS, Histogram, HistogramSnapshot

#: Histograms of a streaming model, by the suffix of their metric name.
GEN_HISTOGRAMS = ("time_to_first_token", "inter_token_latency", "e2e_request_latency",
                  "generation_queue_time", "prefill_time")  # fmt: skip


@dataclass
class GenerationSnapshot:
    prompt_tokens: int
    generation_tokens: int
    finished: dict[str, int]
    histograms: dict[str, HistogramSnapshot]
    occupancy: HistogramSnapshot
    steps: int


class GenerationStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prompt = 0
        self._generated = 0
        self._finished: Counter[str] = Counter()
        self._hist = {name: Histogram(LATENCY_BUCKETS) for name in GEN_HISTOGRAMS}
        self._occupancy = Histogram(BATCH_BUCKETS)
        self._steps = 0

    def begin(self, prompt_tokens: int) -> None:
        with self._lock:
            self._prompt += prompt_tokens

    def token(self, index: int, itl_ns: int) -> None:
        """Token `index` of a generation, `itl_ns` after the one before."""
        with self._lock:
            self._generated += 1
            if index > 0:
                self._hist["inter_token_latency"].observe_many(np.array([itl_ns / 1e9]))

    def step(self, occupancy: int) -> None:
        """One engine step (a decode iteration) over `occupancy` sequences."""
        with self._lock:
            self._steps += 1
            self._occupancy.observe_many(np.array([float(occupancy)]))

    def end(self, reason: str, ttft_ns: int, total_ns: int, queue_ns: int, prefill_ns: int) -> None:
        """A generation ended (times in ns; 0 for a phase it never reached)."""
        with self._lock:
            self._finished[reason] += 1
            h = self._hist
            if ttft_ns:
                h["time_to_first_token"].observe_many(np.array([ttft_ns / 1e9]))
            h["e2e_request_latency"].observe_many(np.array([total_ns / 1e9]))
            h["generation_queue_time"].observe_many(np.array([queue_ns / 1e9]))
            if prefill_ns:
                h["prefill_time"].observe_many(np.array([prefill_ns / 1e9]))

    def snapshot(self) -> GenerationSnapshot:
        with self._lock:
            return GenerationSnapshot(
                self._prompt,
                self._generated,
                dict(self._finished),
                {k: v.snapshot() for k, v in self._hist.items()},
                self._occupancy.snapshot(),
                self._steps,
            )
