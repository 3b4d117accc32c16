"""What each load-generator process measures, at microsecond resolution.

Locust rounds response times to about two significant digits before computing
its percentiles (a 0.4 ms request becomes 0), so every latency also goes into an
HDR histogram here. Workers ship their cumulative recorder state to the master
with every report (a lost report costs nothing: the next one carries it all),
and the master merges the latest state of every worker. Each run has a
recorder of its own (loadtest.run).
"""

from __future__ import annotations

import base64
import threading
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

import numpy as np
from hdrh.histogram import HdrHistogram

from loadtest.codec import from_json, to_json
from loadtest.results import TargetInfo
from server.stats import PHASES  # the server's phase names, which its responses carry

# 1 µs to 1 h at 3 significant digits: 0.1 % value error at any magnitude.
LOWEST_US, HIGHEST_US, DIGITS = 1, 3_600_000_000, 3


FOLD_EVERY = 50_000
# Sub-buckets of the histogram: 2 * 10^DIGITS rounded up to a power of two.
_SUB_BUCKET_MAGNITUDE = 10


def quantized_counts(ns: np.ndarray) -> tuple[list[int], list[int]]:
    """Latencies (ns) as microsecond values at the histogram's own resolution,
    each distinct value with its count: recording these gives the histogram the
    same contents as recording each value, with one call per distinct bucket."""
    us = np.clip(np.rint(ns / 1000.0), LOWEST_US, HIGHEST_US).astype(np.int64)
    magnitude = np.floor(np.log2(us)).astype(np.int64) - _SUB_BUCKET_MAGNITUDE
    unit = np.left_shift(1, np.maximum(magnitude, 0))
    values, counts = np.unique((us // unit) * unit, return_counts=True)
    return values.tolist(), counts.tolist()


def new_hist() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def encode(hist: HdrHistogram) -> str:
    return hist.encode().decode()


def drop(*hists: HdrHistogram) -> None:
    """Free histograms now. An HdrHistogram and its encoder point at each other,
    so a discarded one waits for the cyclic garbage collector, which large
    ctypes buffers (~90 KiB each) do not prompt: a master that discards one per
    report and per time-series point grows its RSS in steps that way."""
    for hist in hists:
        hist.encoder = None


def decode_into(target: HdrHistogram, encoded: str) -> None:
    if encoded:
        other = HdrHistogram.decode(encoded.encode(), target.b64_wrap)
        target.add(other)
        drop(other)


# The status of an open-loop send still queued or in flight when the run stopped,
# and the open-loop counter of the shortest such wait (µs).
UNFINISHED = "UNFINISHED"
UNFINISHED_MIN_US = "unfinished_min_us"
# Calls the target did not take (connection refused, reset): count, first and last (epoch ms).
UNREACHABLE = "unreachable"
UNREACHABLE_FIRST_MS = "unreachable_first_ms"
UNREACHABLE_LAST_MS = "unreachable_last_ms"


@dataclass
class NameStats:
    """Everything recorded under one request name (a scenario phase)."""

    latency: HdrHistogram = field(default_factory=new_hist)
    statuses: Counter[str] = field(default_factory=Counter)
    samples: int = 0
    bytes_received: int = 0
    server: dict[str, HdrHistogram] = field(default_factory=dict)
    server_sum_ns: Counter[str] = field(default_factory=Counter)
    server_count: int = 0
    batch_size_sum: int = 0
    first_s: float = 0.0
    last_s: float = 0.0
    pending: list[int] = field(default_factory=list)  # latencies (ns) not yet in `latency`
    pending_server: list[dict[str, int]] = field(default_factory=list)


class Recorder:
    """One per run and process; `record` is called by every request, so it stays cheap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.names: dict[str, NameStats] = {}
        # Interval histogram for the time series: reset whenever it is shipped.
        self.window = new_hist()
        self.openloop: Counter[str] = Counter()
        self.cpu = CpuStats()
        self.started = time.time()
        # Raw latencies (ns), kept only when --latency-log asks for them.
        self.raw: list[int] | None = None

    def keep_raw(self) -> None:
        with self._lock:
            if self.raw is None:
                self.raw = []

    def record(
        self,
        name: str,
        latency_ns: int,
        status: str,
        samples: int,
        size: int,
        server: dict[str, int] | None,
    ) -> None:
        """One request. Latencies are only appended here; they reach the HDR
        histograms in bulk when the recorder is read (see `_fold`), which keeps
        the per-request cost near a list append."""
        with self._lock:
            st = self.names.get(name)
            now = time.time()
            if st is None:
                st = self.names[name] = NameStats(first_s=now)
            st.last_s = now
            st.statuses[status] += 1
            if status == UNFINISHED:
                # Its wait so far enters the latency statistics as a lower bound
                # (the survivors alone would flatter the percentiles).
                st.pending.append(latency_ns)
                us = max(latency_ns // 1000, 1)
                low = self.openloop.get(UNFINISHED_MIN_US, 0)
                self.openloop[UNFINISHED_MIN_US] = min(low, us) if low else us
                return
            if status != "OK":
                return
            st.pending.append(latency_ns)
            if self.raw is not None:
                self.raw.append(latency_ns)
            st.samples += samples
            st.bytes_received += size
            if server:
                st.pending_server.append(server)
            if len(st.pending) >= FOLD_EVERY:
                self._fold(st)

    def _fold(self, st: NameStats) -> None:
        """Move pending values into the histograms (lock held)."""
        if st.pending:
            lat, st.pending = st.pending, []
            values, counts = quantized_counts(np.asarray(lat, dtype=np.int64))
            for v, c in zip(values, counts, strict=True):
                st.latency.record_value(v, c)
                self.window.record_value(v, c)
        if st.pending_server:
            rows, st.pending_server = st.pending_server, []
            st.server_count += len(rows)
            st.batch_size_sum += sum(r.get("batch_size", 0) for r in rows)
            for phase in PHASES:
                ns = np.array([r[phase] for r in rows if phase in r], dtype=np.int64)
                if not len(ns):
                    continue
                st.server_sum_ns[phase] += int(ns.sum())
                hist = st.server.get(phase)
                if hist is None:
                    hist = st.server[phase] = new_hist()
                for v, c in zip(*quantized_counts(ns), strict=True):
                    hist.record_value(v, c)

    def count_openloop(self, outcome: str, n: int = 1) -> None:
        with self._lock:
            self.openloop[outcome] += n

    def note_behind(self, seconds: float) -> None:
        """How far the open-loop dispatcher trails its schedule (the worst kept)."""
        us = int(seconds * 1e6)
        if us > self.openloop.get("max_behind_us", 0):
            self.openloop["max_behind_us"] = us

    def note_unreachable(self, epoch_s: float) -> None:
        """A call the target did not take: the outage's first and last (epoch ms) and count."""
        ms = int(epoch_s * 1000)
        with self._lock:
            self.openloop[UNREACHABLE] += 1
            first = self.openloop.get(UNREACHABLE_FIRST_MS, 0)
            self.openloop[UNREACHABLE_FIRST_MS] = min(first, ms) if first else ms
            self.openloop[UNREACHABLE_LAST_MS] = max(self.openloop.get(UNREACHABLE_LAST_MS, 0), ms)

    def add_cpu_sample(self, percent: float) -> None:
        with self._lock:
            self.cpu.add(percent)

    def snapshot(self, take_window: bool = True) -> Snapshot:
        """Cumulative state (for report_to_master); the interval histogram is
        shipped and reset."""
        with self._lock:
            for st in self.names.values():
                self._fold(st)
            names = {
                name: NameSnapshot(
                    latency=encode(st.latency),
                    statuses=dict(st.statuses),
                    samples=st.samples,
                    bytes=st.bytes_received,
                    server={p: encode(h) for p, h in st.server.items()},
                    server_sum_ns=dict(st.server_sum_ns),
                    server_count=st.server_count,
                    batch_size_sum=st.batch_size_sum,
                    first_s=st.first_s,
                    last_s=st.last_s,
                )
                for name, st in self.names.items()
            }
            window = ""
            if take_window:
                window = encode(self.window) if self.window.get_total_count() else ""
                drop(self.window)
                self.window = new_hist()
            return Snapshot(names, window, dict(self.openloop), self.cpu.to_snapshot(), self.started)


@dataclass
class NameSnapshot:
    latency: str  # encoded HDR histogram
    statuses: dict[str, int]
    samples: int
    bytes: int
    server: dict[str, str]
    server_sum_ns: dict[str, int]
    server_count: int
    batch_size_sum: int
    first_s: float
    last_s: float


@dataclass
class Snapshot:
    """What a process has measured in a run so far: what a worker ships."""

    names: dict[str, NameSnapshot]
    window: str  # encoded interval histogram ("" when empty)
    openloop: dict[str, int]
    cpu: CpuSnapshot
    started: float
    run_id: str = ""
    token: str = ""  # the run's (loadtest.run.Run.token)
    target: TargetInfo | None = None
    setup_error: str = ""

    def without_window(self) -> Snapshot:
        return replace(self, window="")

    def pack(self) -> str:
        """Compact transport (Locust sends reports as msgpack)."""
        import json

        return base64.b64encode(zlib.compress(json.dumps(to_json(self)).encode())).decode()

    @classmethod
    def unpack(cls, blob: str) -> Snapshot:
        import json

        return from_json(cls, json.loads(zlib.decompress(base64.b64decode(blob))), "snapshot")


class CpuStats:
    """A process's CPU samples (percent, one a second) in constant space, so that
    a 24-hour soak ships the same few hundred bytes every report as a 1-minute
    run: the first `HEAD` samples (start-up) as they are, the rest as a
    histogram at 0.1 % resolution, and the count, sum, maximum and last value."""

    HEAD = 5

    def __init__(self) -> None:
        self.n = 0
        self.total = 0.0
        self.max = 0.0
        self.last = 0.0
        self.head: list[float] = []
        self.hist: Counter[float] = Counter()

    def add(self, percent: float) -> None:
        self.n += 1
        self.total += percent
        self.max = max(self.max, percent)
        self.last = percent
        if len(self.head) < self.HEAD:
            self.head.append(percent)
        else:
            self.hist[round(percent, 1)] += 1

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def saturated_fraction(self, threshold: float) -> float:
        """Share of the steady samples at or above `threshold` percent; the
        start-up samples count only in runs too short to have a steady part."""
        steady: Counter[float] = Counter(self.hist)
        if self.n <= self.HEAD + 3:
            steady.update(round(p, 1) for p in self.head)
        count = sum(steady.values())
        return sum(c for p, c in steady.items() if p >= threshold) / count if count else 0.0

    def to_snapshot(self) -> CpuSnapshot:
        return CpuSnapshot(
            self.n, self.total, self.max, self.last, list(self.head), [[p, c] for p, c in self.hist.items()]
        )

    @classmethod
    def from_snapshot(cls, d: CpuSnapshot) -> CpuStats:
        out = cls()
        out.n, out.total, out.max, out.last = d.n, d.sum, d.max, d.last
        out.head = list(d.head)
        out.hist = Counter({float(p): int(c) for p, c in d.hist})
        return out


@dataclass
class CpuSnapshot:
    """CpuStats as a worker ships it."""

    n: int = 0
    sum: float = 0.0
    max: float = 0.0
    last: float = 0.0
    head: list[float] = field(default_factory=list)
    hist: list[list[float]] = field(default_factory=list)  # [percent, count] pairs


@dataclass
class Merged:
    """The merge of every process's latest snapshot."""

    names: dict[str, NameStats]
    openloop: Counter[str]
    cpu: dict[str, CpuStats]

    def release(self) -> None:
        """Free the histograms now (see `drop`): for callers that merge often."""
        for st in self.names.values():
            drop(st.latency, *st.server.values())


def merge(snapshots: dict[str, Snapshot]) -> Merged:
    """Merge worker snapshots (keyed by worker id) into histograms and counts."""
    names: dict[str, NameStats] = defaultdict(NameStats)
    openloop: Counter[str] = Counter()
    cpu: dict[str, CpuStats] = {}
    for worker, snap in snapshots.items():
        ol = dict(snap.openloop)
        behind = ol.pop("max_behind_us", 0)
        lows = {k: ol.pop(k, 0) for k in (UNFINISHED_MIN_US, UNREACHABLE_FIRST_MS)}
        last = ol.pop(UNREACHABLE_LAST_MS, 0)
        openloop.update(ol)
        openloop["max_behind_us"] = max(openloop.get("max_behind_us", 0), behind)
        openloop[UNREACHABLE_LAST_MS] = max(openloop.get(UNREACHABLE_LAST_MS, 0), last)
        for key, low in lows.items():  # the least non-zero value: 0 means none seen
            if low:
                seen = openloop.get(key, 0)
                openloop[key] = min(seen, low) if seen else low
        cpu[worker] = CpuStats.from_snapshot(snap.cpu)
        for name, d in snap.names.items():
            st = names[name]
            decode_into(st.latency, d.latency)
            st.statuses.update(d.statuses)
            st.samples += d.samples
            st.bytes_received += d.bytes
            st.server_count += d.server_count
            st.batch_size_sum += d.batch_size_sum
            st.server_sum_ns.update(d.server_sum_ns)
            for phase, enc in d.server.items():
                decode_into(st.server.setdefault(phase, new_hist()), enc)
            st.first_s = min(st.first_s, d.first_s) if st.first_s else d.first_s
            st.last_s = max(st.last_s, d.last_s)
    return Merged(dict(names), openloop, cpu)
