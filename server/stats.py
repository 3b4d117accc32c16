"""Per-model statistics accumulated from the probes.

One `ModelStats` per served model. The scheduler records every request and
every model execution; ModelStatistics (gRPC) and the Prometheus exporter read
snapshots. Histograms are kept here in seconds with fixed buckets so that an
exporter can publish them on scrape without touching the request path.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

# Latency buckets in seconds: 50 µs to 60 s, roughly x2 apart, fine enough to
# read a 0.4 ms GPU request and a 30 s overloaded one from the same histogram.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)

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

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

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


class ModelStats:
    """Thread-safe accumulator for one model version."""

    def __init__(self, model: str, version: str = "1") -> None:
        self.model = model
        self.version = version
        self._lock = threading.Lock()
        self._last_inference_ms = 0
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
        with self._lock:
            self._last_inference_ms = int(time.time() * 1000)
            self._inference_count += samples
            self._success.add(t.total_ns)
            self._queue.add(t.queue_ns)
            self._compute_input.add(t.batch_assembly_ns + t.h2d_ns)
            self._compute_infer.add(t.compute_ns)
            self._compute_output.add(t.d2h_ns)
            self._outcomes["OK"] += 1
            for phase in PHASES:
                self._phases[phase].observe(t.phase_ns(phase) / 1e9)

    def record_failure(self, status: str, total_ns: int) -> None:
        with self._lock:
            self._fail.add(total_ns)
            self._outcomes[status] += 1

    def record_execution(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One model execution (a formed batch of `batch_size` samples)."""
        with self._lock:
            self._execution_count += 1
            self._batch_sizes.observe(batch_size)
            bs = self._batch_stats.get(batch_size)
            if bs is None:
                bs = self._batch_stats[batch_size] = BatchStats()
            bs.compute_input.add(input_ns)
            bs.compute_infer.add(infer_ns)
            bs.compute_output.add(output_ns)

    def snapshot(self) -> StatsSnapshot:
        def copy(d: Duration) -> Duration:
            return Duration(d.count, d.ns)

        with self._lock:
            return StatsSnapshot(
                model=self.model,
                version=self.version,
                last_inference_ms=self._last_inference_ms,
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
