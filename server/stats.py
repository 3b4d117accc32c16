"""Per-model statistics accumulated from the probes.

One `ModelStats` per served model. The scheduler records every request and
every model execution; ModelStatistics (gRPC) and the Prometheus exporter read
snapshots. Histograms are kept here in seconds with fixed buckets so that an
exporter can publish them on scrape without touching the request path.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Latency buckets in seconds: 50 µs to 60 s, roughly x2 apart, fine enough to
# read a 0.4 ms GPU request and a 30 s overloaded one from the same histogram.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# The phases of a request's server-side time, in order; every other module (the
# response breakdown, the exporters, the load generator's recorder) uses these names.
PHASES = ("queue", "batch_assembly", "h2d", "compute", "d2h", "total")


@dataclass
class RequestTiming:
    """The server-side breakdown of one request, in nanoseconds."""

    queue_ns: int = 0
    batch_assembly_ns: int = 0
    h2d_ns: int = 0
    compute_ns: int = 0
    d2h_ns: int = 0
    total_ns: int = 0
    # Samples in the model execution that served this request, and how many
    # requests it combined.
    batch_size: int = 0
    batch_requests: int = 0
    clock: str = "perf_counter"

    def phase_ns(self, phase: str) -> int:
        return int(getattr(self, f"{phase}_ns"))


class Histogram:
    """Cumulative-on-read histogram with fixed upper bounds (not thread-safe alone)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last: +Inf
        self.sum = 0.0

    def observe_many(self, values: np.ndarray) -> None:
        # searchsorted(side="left") puts a value equal to a bound in that bound's
        # bucket, as Prometheus' le ("less or equal") expects.
        idx = np.searchsorted(np.asarray(self.bounds), values, side="left")
        for i, c in enumerate(np.bincount(idx, minlength=len(self.counts))):
            self.counts[i] += int(c)
        self.sum += float(values.sum())

    def snapshot(self) -> HistogramSnapshot:
        cumulative, running = [], 0
        for c in self.counts:
            running += c
            cumulative.append(running)
        return HistogramSnapshot(self.bounds, cumulative, self.sum)


@dataclass
class HistogramSnapshot:
    bounds: tuple[float, ...]
    # cumulative counts per bound, then +Inf (== total count)
    cumulative: list[int]
    sum: float

    @property
    def count(self) -> int:
        return self.cumulative[-1]


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class StatsSnapshot:
    """A consistent copy of a model's statistics at one instant."""

    model: str
    version: str
    last_inference_ms: int
    inference_count: int
    execution_count: int
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    batch_stats: dict[int, BatchStats]
    outcomes: dict[str, int]
    phase_histograms: dict[str, HistogramSnapshot]
    batch_size_histogram: HistogramSnapshot
    queue_depth: int
    in_flight: int


def _take(pending: list[Any]) -> list[Any]:
    """Remove and return what `pending` holds, safe against appends from another
    thread: slicing and deleting a slice are each atomic under the GIL, and an
    append landing in between goes after the slice and stays for next time."""
    n = len(pending)
    chunk = pending[:n]
    del pending[:n]
    return chunk


class ModelStats:
    """Per-model accumulator, cheap on the request path.

    Requests and executions are appended as tuples to pending lists (an append
    is atomic under the GIL and costs a fraction of a microsecond); they are
    folded into the totals and histograms in bulk, with numpy, when a reader
    asks for a snapshot or a list grows past `flush_every`. Per-request locking
    and bucket searches would cost the server a few percent of its throughput on
    a small model.
    """

    def __init__(self, model: str, version: str = "1", flush_every: int = 4096) -> None:
        self.model = model
        self.version = version
        self.flush_every = flush_every
        self._lock = threading.Lock()
        self._pending_req: list[tuple[int, int, int, int, int, int, int]] = []
        self._pending_exec: list[tuple[int, int, int, int]] = []
        self._last_inference = 0.0
        self._inference_count = 0
        self._execution_count = 0
        self._success = Duration()
        self._fail = Duration()
        self._queue = Duration()
        self._compute_input = Duration()
        self._compute_infer = Duration()
        self._compute_output = Duration()
        self._batch_stats: dict[int, BatchStats] = {}
        self._outcomes: Counter[str] = Counter()
        self._phases = {p: Histogram(LATENCY_BUCKETS) for p in PHASES}
        self._batch_sizes = Histogram(BATCH_BUCKETS)
        # Gauges maintained by the scheduler.
        self.queue_depth = 0
        self.in_flight = 0

    def record_success(self, t: RequestTiming, samples: int) -> None:
        self._last_inference = time.time()
        self._pending_req.append(
            (t.queue_ns, t.batch_assembly_ns, t.h2d_ns, t.compute_ns, t.d2h_ns, t.total_ns, samples)
        )
        if len(self._pending_req) >= self.flush_every:
            self._flush()

    def record_failure(self, status: str, total_ns: int) -> None:
        with self._lock:
            self._fail.add(total_ns)
            self._outcomes[status] += 1

    def record_execution(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One model execution (a formed batch of `batch_size` samples)."""
        self._pending_exec.append((batch_size, input_ns, infer_ns, output_ns))
        if len(self._pending_exec) >= self.flush_every:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            reqs = _take(self._pending_req)
            execs = _take(self._pending_exec)
            if reqs:
                self._fold_requests(np.array(reqs, dtype=np.int64).reshape(-1, 7))
            if execs:
                self._fold_executions(np.array(execs, dtype=np.int64).reshape(-1, 4))

    def _fold_requests(self, a: np.ndarray) -> None:
        n = len(a)
        self._inference_count += int(a[:, 6].sum())
        self._queue.add(int(a[:, 0].sum()), n)
        self._compute_input.add(int(a[:, 1].sum() + a[:, 2].sum()), n)
        self._compute_infer.add(int(a[:, 3].sum()), n)
        self._compute_output.add(int(a[:, 4].sum()), n)
        self._success.add(int(a[:, 5].sum()), n)
        self._outcomes["OK"] += n
        for col, phase in enumerate(PHASES):
            self._phases[phase].observe_many(a[:, col] * 1e-9)

    def _fold_executions(self, a: np.ndarray) -> None:
        self._execution_count += len(a)
        self._batch_sizes.observe_many(a[:, 0].astype(float))
        for size in np.unique(a[:, 0]):
            rows = a[a[:, 0] == size]
            bs = self._batch_stats.get(int(size))
            if bs is None:
                bs = self._batch_stats[int(size)] = BatchStats()
            bs.compute_input.add(int(rows[:, 1].sum()), len(rows))
            bs.compute_infer.add(int(rows[:, 2].sum()), len(rows))
            bs.compute_output.add(int(rows[:, 3].sum()), len(rows))

    def snapshot(self) -> StatsSnapshot:
        def copy(d: Duration) -> Duration:
            return Duration(d.count, d.ns)

        self._flush()
        with self._lock:
            return StatsSnapshot(
                model=self.model,
                version=self.version,
                last_inference_ms=int(self._last_inference * 1000),
                inference_count=self._inference_count,
                execution_count=self._execution_count,
                success=copy(self._success),
                fail=copy(self._fail),
                queue=copy(self._queue),
                compute_input=copy(self._compute_input),
                compute_infer=copy(self._compute_infer),
                compute_output=copy(self._compute_output),
                batch_stats={
                    k: BatchStats(copy(v.compute_input), copy(v.compute_infer), copy(v.compute_output))
                    for k, v in sorted(self._batch_stats.items())
                },
                outcomes=dict(self._outcomes),
                phase_histograms={p: h.snapshot() for p, h in self._phases.items()},
                batch_size_histogram=self._batch_sizes.snapshot(),
                queue_depth=self.queue_depth,
                in_flight=self.in_flight,
            )
