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
import bisect
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field, replace

import numpy as np
from hdrh.histogram import HdrHistogram

from loadtest.codec import from_json, to_json
from loadtest.fold import Delta, Folded, Pending, pack, unpack
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
# The open-loop schedule's lag (how late the dispatcher woke for a send) as counts
# under these upper bounds (µs): they add up across workers like the other
# counters, and the summary reads its percentiles off them (loadtest.summary).
LAG_BOUNDS_US = (100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000)
LAG_PREFIX = "lag_le_us_"
LAG_OVER = "lag_over_us"


def lag_key(seconds: float) -> str:
    """The open-loop counter a schedule lag of `seconds` counts under."""
    i = bisect.bisect_left(LAG_BOUNDS_US, seconds * 1e6)
    return f"{LAG_PREFIX}{LAG_BOUNDS_US[i]}" if i < len(LAG_BOUNDS_US) else LAG_OVER


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
    name: str = ""  # the key it is recorded under (its deltas carry it)
    # The client's view of each successful request, split (ns summed over client_count):
    # "send_wait" (open loop: scheduled until sent, waiting for a free user) and "call"
    # (sent until answered: transport plus the server's own time).
    client_sum_ns: Counter[str] = field(default_factory=Counter)
    client_count: int = 0
    # Streamed requests (loadtest.streaming): token counts ("prompt", "output", "streams",
    # "from_usage", "good"), and per-token timings not yet in the `server` histograms
    # under the STREAM_KEYS names.
    tokens: Counter[str] = field(default_factory=Counter)
    pending_stream: dict[str, list[int]] = field(default_factory=dict)


# The histograms of streamed requests, kept beside the server's phases (and shipped,
# folded and merged the same way): time to first token, inter-token latency, time
# per output token.
STREAM_KEYS = {"ttft": "stream:ttft", "itl": "stream:itl", "tpot": "stream:tpot", "itl_added": "stream:itl_added"}
# Those charted by time (the rest are in the totals only).
WINDOWED = ("ttft", "itl")


class Recorder:
    """One per run and process; `record` is called by every request, so it stays cheap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.names: dict[str, NameStats] = {}
        # The time series' histograms by request time: one per `bucket_s` interval of
        # the clock (aligned to multiples of it, so every worker's buckets line up),
        # the current one in `window`; shipped and reset with each report.
        self.bucket_s = 2.0
        self._bucket = int(time.time() // self.bucket_s)
        self.window = new_hist()
        self.windows: dict[int, HdrHistogram] = {}
        self.window_fails: Counter[int] = Counter()
        # Streamed requests' TTFT and ITL by the same intervals ("ttft", "itl" -> histogram).
        self.token_window: dict[str, HdrHistogram] = {}
        self.token_windows: dict[int, dict[str, HdrHistogram]] = {}
        self.openloop: Counter[str] = Counter()
        self.cpu = CpuStats()
        self.started = time.time()
        # Raw latencies (ns), kept only when --latency-log asks for them.
        self.raw: list[int] | None = None
        # Histogram deltas for the master (loadtest.fold): since the last
        # report, and those sent but not yet acknowledged.
        self.pending = Pending()
        self.seq = 0
        self.unacked: list[Delta] = []

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
        call_ns: int | None = None,
    ) -> None:
        """One request. Latencies are only appended here; they reach the HDR
        histograms in bulk when the recorder is read (see `_fold`), which keeps
        the per-request cost near a list append. `call_ns`: the call itself (sent
        to answered), when `latency_ns` also counts a wait before the send."""
        with self._lock:
            st = self.names.get(name)
            now = time.time()
            bucket = int(now // self.bucket_s)
            if bucket != self._bucket:
                self._next_bucket(bucket)
            if st is None:
                st = self.names[name] = NameStats(first_s=now, name=name)
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
                self.window_fails[bucket] += 1
                return
            st.pending.append(latency_ns)
            if self.raw is not None:
                self.raw.append(latency_ns)
            st.samples += samples
            st.bytes_received += size
            call = latency_ns if call_ns is None else min(call_ns, latency_ns)
            st.client_sum_ns["call"] += call
            st.client_sum_ns["send_wait"] += latency_ns - call
            st.client_count += 1
            if server:
                st.pending_server.append(server)
            if len(st.pending) >= FOLD_EVERY:
                self._fold(st)

    def record_stream(self, name: str, ttft_ns: int, itl_ns: list[int], tpot_ns: int | None,
                      counts: dict[str, int], itl_added_ns: list[int] | None = None) -> None:  # fmt: skip
        """A streamed request's token timings and counts (its E2E latency goes
        through `record` like any request's)."""
        with self._lock:
            st = self.names.get(name)
            if st is None:
                now = time.time()
                st = self.names[name] = NameStats(first_s=now, last_s=now, name=name)
            st.tokens.update(counts)
            pend = st.pending_stream
            if ttft_ns:
                pend.setdefault("ttft", []).append(ttft_ns)
            if itl_ns:
                pend.setdefault("itl", []).extend(itl_ns)
            if tpot_ns is not None:
                pend.setdefault("tpot", []).append(tpot_ns)
            if itl_added_ns:
                pend.setdefault("itl_added", []).extend(itl_added_ns)
            if len(pend.get("itl", ())) >= FOLD_EVERY:
                self._fold(st)

    def _next_bucket(self, bucket: int) -> None:
        """The clock entered another series interval: close the current one (lock held)."""
        for st in self.names.values():
            self._fold(st)
        self._close_window()
        self._bucket = bucket

    def _close_window(self) -> None:
        if self.token_window:
            held_tokens = self.token_windows.setdefault(self._bucket, {})
            for short, hist in self.token_window.items():
                if short in held_tokens:
                    held_tokens[short].add(hist)
                    drop(hist)
                else:
                    held_tokens[short] = hist
            self.token_window = {}
        if self.window.get_total_count():
            held = self.windows.get(self._bucket)
            if held is None:
                self.windows[self._bucket] = self.window
            else:
                held.add(self.window)
                drop(self.window)
            self.window = new_hist()

    def set_bucket(self, seconds: float) -> None:
        """The series interval (the run's --series-interval) that buckets requests by time."""
        with self._lock:
            for st in self.names.values():
                self._fold(st)
            self._close_window()
            self.bucket_s = seconds
            self._bucket = int(time.time() // seconds)

    def _fold(self, st: NameStats) -> None:
        """Move pending values into the histograms (lock held)."""
        if st.pending:
            lat, st.pending = st.pending, []
            values, counts = quantized_counts(np.asarray(lat, dtype=np.int64))
            for v, c in zip(values, counts, strict=True):
                st.latency.record_value(v, c)
                self.window.record_value(v, c)
            self.pending.add(st.name, values, counts)
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
                values, counts = quantized_counts(ns)
                for v, c in zip(values, counts, strict=True):
                    hist.record_value(v, c)
                self.pending.add(st.name, values, counts, phase)
        if st.pending_stream:
            table, st.pending_stream = st.pending_stream, {}
            for short, ns_list in table.items():
                key = STREAM_KEYS[short]
                hist = st.server.get(key)
                if hist is None:
                    hist = st.server[key] = new_hist()
                values, counts = quantized_counts(np.asarray(ns_list, dtype=np.int64))
                window = self.token_window.get(short) if short in WINDOWED else None
                if window is None and short in WINDOWED:
                    window = self.token_window[short] = new_hist()
                for v, c in zip(values, counts, strict=True):
                    hist.record_value(v, c)
                    if window is not None:
                        window.record_value(v, c)
                self.pending.add(st.name, values, counts, key)

    def count_openloop(self, outcome: str, n: int = 1) -> None:
        with self._lock:
            self.openloop[outcome] += n

    def note_behind(self, seconds: float) -> None:
        """How far the open-loop dispatcher trails its schedule (the worst kept)."""
        us = int(seconds * 1e6)
        with self._lock:
            self.openloop[lag_key(seconds)] += 1
            if us > self.openloop.get("max_behind_us", 0):
                self.openloop["max_behind_us"] = us

    def note_behind_counts(self, counts: dict[str, int], worst_s: float) -> None:
        """Schedule counts made elsewhere (the request engine's schedule: scheduled,
        dropped, late and lag buckets) and the worst lag among them."""
        us = int(worst_s * 1e6)
        with self._lock:
            self.openloop.update(counts)
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

    def add_loop_tick(self, late_s: float) -> None:
        with self._lock:
            self.cpu.add_tick(late_s)

    def add_cpu_sample(self, percent: float) -> None:
        with self._lock:
            self.cpu.add(percent)

    def snapshot(self, take_window: bool = True, names: Collection[str] | None = None) -> Snapshot:
        """Cumulative state, histograms included (what a local run merges and
        a worker that lost its master writes); the interval histogram is
        shipped and reset. `names`: only those request names (a cheap look at
        one phase while the run goes on)."""
        with self._lock:
            return self._state(take_window, True, names)

    def report(self) -> Snapshot:
        """What a worker sends the master (report_to_master, the final flush):
        cumulative counters, and instead of cumulative histograms the deltas
        the master has not acknowledged yet (loadtest.fold)."""
        with self._lock:
            snap = self._state(True, False)
            delta = self.pending.take(self.seq + 1)
            if delta is not None:
                self.seq = delta.seq
                self.unacked.append(delta)
            snap.deltas = list(self.unacked)
            return snap

    def acknowledge(self, seq: int) -> None:
        """The master has folded the deltas up to `seq`: they need not travel again."""
        with self._lock:
            self.unacked = [d for d in self.unacked if d.seq > seq]

    def _state(self, take_window: bool, histograms: bool, only: Collection[str] | None = None) -> Snapshot:
        """The snapshot (lock held)."""
        chosen = self.names if only is None else {n: self.names[n] for n in only if n in self.names}
        for st in chosen.values():
            self._fold(st)
        names = {
            name: NameSnapshot(
                latency=encode(st.latency) if histograms else "",
                statuses=dict(st.statuses),
                samples=st.samples,
                bytes=st.bytes_received,
                server={p: encode(h) for p, h in st.server.items()} if histograms else {},
                server_sum_ns=dict(st.server_sum_ns),
                server_count=st.server_count,
                batch_size_sum=st.batch_size_sum,
                first_s=st.first_s,
                last_s=st.last_s,
                client_sum_ns=dict(st.client_sum_ns),
                client_count=st.client_count,
                tokens=dict(st.tokens),
            )
            for name, st in chosen.items()
        }
        windows: dict[str, str] = {}
        fails: dict[str, int] = {}
        if take_window:
            if only is not None:
                for st in self.names.values():
                    self._fold(st)
            self._close_window()
            windows = {str(b): encode(h) for b, h in sorted(self.windows.items())}
            fails = {str(b): n for b, n in sorted(self.window_fails.items())}
            drop(*self.windows.values())
            self.windows, self.window_fails = {}, Counter()
            tokens = {
                str(b): {k: encode(h) for k, h in t.items()} for b, t in sorted(self.token_windows.items())
            }
            for t in self.token_windows.values():
                drop(*t.values())
            self.token_windows = {}
        snap = Snapshot(names, windows, dict(self.openloop), self.cpu.to_snapshot(), self.started)
        snap.window_fails, snap.bucket_s = fails, self.bucket_s
        if take_window:
            snap.token_windows = tokens
        return snap


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
    client_sum_ns: dict[str, int] = field(default_factory=dict)
    client_count: int = 0
    tokens: dict[str, int] = field(default_factory=dict)


@dataclass
class Snapshot:
    """What a process has measured in a run so far: what a worker ships."""

    names: dict[str, NameSnapshot]
    # The series' histograms since the last report, by request time: the clock's
    # interval number (time // bucket_s) -> encoded histogram, and failures likewise.
    windows: dict[str, str]
    openloop: dict[str, int]
    cpu: CpuSnapshot
    started: float
    run_id: str = ""
    token: str = ""  # the run's (loadtest.run.Run.token)
    target: TargetInfo | None = None
    setup_error: str = ""
    deltas: list[Delta] = field(default_factory=list)  # histograms since the last acknowledged report
    window_fails: dict[str, int] = field(default_factory=dict)
    bucket_s: float = 2.0
    token_windows: dict[str, dict[str, str]] = field(
        default_factory=dict
    )  # interval -> "ttft"/"itl" -> histogram

    def without_window(self) -> Snapshot:
        """What the master keeps of a report: the interval histogram and the
        deltas are folded into the run when it arrives."""
        return replace(self, windows={}, window_fails={}, deltas=[], token_windows={})

    def pack(self) -> str:
        """Compact transport (Locust sends reports as msgpack)."""
        import json

        return base64.b64encode(zlib.compress(json.dumps(to_json(self)).encode())).decode()

    @classmethod
    def unpack(cls, blob: str) -> Snapshot:
        import json

        return from_json(cls, json.loads(zlib.decompress(base64.b64decode(blob))), "snapshot")


# The generator's event-loop watch: a tick every LOOP_TICK_S; one that wakes more
# than LOOP_LAGGED_S late means the loop had more ready work than CPU to run it
# (its own CPU saturated, or the process starved of CPU by others on the machine).
LOOP_TICK_S = 0.05
LOOP_LAGGED_S = 0.02
# Fewer ticks (3 s) judge nothing: a run that short is mostly its own start-up.
LOOP_MIN_TICKS = 60


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
        # The event loop's own lag: ticks of LOOP_TICK_S, those that woke more than
        # LOOP_LAGGED_S late (the loop had more ready work than CPU), the worst.
        self.ticks = 0
        self.lagged = 0
        self.lag_max_s = 0.0

    def add_tick(self, late_s: float) -> None:
        self.ticks += 1
        self.lagged += late_s > LOOP_LAGGED_S
        self.lag_max_s = max(self.lag_max_s, late_s)

    @property
    def lagged_fraction(self) -> float:
        return self.lagged / self.ticks if self.ticks else 0.0

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
        tenths = Counter({round(p * 10): c for p, c in self.hist.items()})
        return CpuSnapshot(self.n, self.total, self.max, self.last, list(self.head), pack(tenths),
                           self.ticks, self.lagged, self.lag_max_s)  # fmt: skip

    @classmethod
    def from_snapshot(cls, d: CpuSnapshot) -> CpuStats:
        out = cls()
        out.n, out.total, out.max, out.last = d.n, d.sum, d.max, d.last
        out.head = list(d.head)
        out.ticks, out.lagged, out.lag_max_s = d.ticks, d.lagged, d.lag_max_s
        tenths, counts = unpack(d.hist)
        out.hist = Counter({t / 10: c for t, c in zip(tenths.tolist(), counts.tolist(), strict=True)})
        return out


@dataclass
class CpuSnapshot:
    """CpuStats as a worker ships it."""

    n: int = 0
    sum: float = 0.0
    max: float = 0.0
    last: float = 0.0
    head: list[float] = field(default_factory=list)
    # The histogram as tenths of a percent and counts (loadtest.fold.pack): a
    # list of pairs would cost the master a field check per pair and report.
    hist: str = ""
    ticks: int = 0
    lagged: int = 0
    lag_max_s: float = 0.0


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


def _hist(table: dict[str, HdrHistogram], key: str) -> HdrHistogram:
    """The histogram under `key`, made on first use (setdefault would make one per
    call, and a discarded histogram waits for the cyclic collector: see `drop`)."""
    hist = table.get(key)
    if hist is None:
        hist = table[key] = new_hist()
    return hist


def merge_openloop(snapshots: dict[str, Snapshot]) -> Counter[str]:
    """The workers' open-loop counters: counts add up, the schedule lag and the
    last unreachable time are the largest, first times the least non-zero."""
    openloop: Counter[str] = Counter()
    for snap in snapshots.values():
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
    return openloop


def merge(
    snapshots: dict[str, Snapshot], folded: Folded | None = None, only: Collection[str] | None = None
) -> Merged:
    """Merge worker snapshots (keyed by worker id) into histograms and counts,
    with the histograms the master folded from their deltas; `only`: just those
    request names (a phase check during the run need not build every histogram)."""
    names: dict[str, NameStats] = defaultdict(NameStats)
    openloop = merge_openloop(snapshots)
    cpu: dict[str, CpuStats] = {}
    for worker, snap in snapshots.items():
        cpu[worker] = CpuStats.from_snapshot(snap.cpu)
        for name, d in snap.names.items():
            if only is not None and name not in only:
                continue
            st = names[name]
            decode_into(st.latency, d.latency)
            st.statuses.update(d.statuses)
            st.samples += d.samples
            st.bytes_received += d.bytes
            st.server_count += d.server_count
            st.batch_size_sum += d.batch_size_sum
            st.server_sum_ns.update(d.server_sum_ns)
            st.client_sum_ns.update(d.client_sum_ns)
            st.client_count += d.client_count
            st.tokens.update(d.tokens)
            for phase, enc in d.server.items():
                decode_into(_hist(st.server, phase), enc)
            st.first_s = min(st.first_s, d.first_s) if st.first_s else d.first_s
            st.last_s = max(st.last_s, d.last_s)
    if folded is not None:
        for name, slots in folded.latency.items():
            if only is None or name in only:
                Folded.record(slots, names[name].latency)
        for name, phases in folded.server.items():
            if only is not None and name not in only:
                continue
            for phase, slots in phases.items():
                Folded.record(slots, _hist(names[name].server, phase))
    return Merged(dict(names), openloop, cpu)
