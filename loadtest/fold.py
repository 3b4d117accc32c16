"""Histogram deltas from the workers, folded on the master into one running merge.

A worker's cumulative HDR histograms re-sent with every report cost the master
a decode per histogram per worker each time it merges (a Prometheus scrape, a
phase check, the summary): 0.8 s at 500 workers, with the master deaf to its
workers meanwhile. Instead a worker sends, with each report, the values it
recorded since the reports the master has acknowledged (`Delta`: one per
report interval, numbered), and the master folds each delta once into one
running count per histogram; a merge reads those counts, whatever the number
of workers. A report the master misses costs nothing: its delta is still
unacknowledged and rides in the next one; a delta the master has already
folded (its acknowledgement lost) is recognised by its number and skipped.

Values travel as the recorder quantizes them (loadtest.recorder.quantized_counts:
one value per HDR bucket), so a histogram rebuilt from the running counts has
exactly the bucket counts of the merged cumulative histograms.
"""

from __future__ import annotations

import base64
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram

# Sub-bucket bits of the recorder's histograms (2048 sub-buckets, the upper
# half used above the first bucket): a quantized value's dense index below.
_SUB = 10
# 1 µs .. 1 h: the highest value's index is under (32 - _SUB + 1) << _SUB.
_SLOTS = (32 - _SUB + 2) << _SUB


@dataclass
class NameDelta:
    latency: str  # packed value counts (see `pack`)
    server: dict[str, str] = field(default_factory=dict)  # per server phase


@dataclass
class Delta:
    """What one process recorded in one report interval."""

    seq: int  # 1, 2, ... within a run and process
    names: dict[str, NameDelta] = field(default_factory=dict)


def pack(counts: Counter[int]) -> str:
    """Value counts as text: sorted values as gaps, then counts, little-endian
    uint32, deflated, base64 (values are µs up to 1 h, counts per interval)."""
    values = np.array(sorted(counts), dtype=np.int64)
    n = np.array([counts[v] for v in values.tolist()], dtype=np.int64)
    raw = np.concatenate([np.diff(values, prepend=0), n]).astype("<u4").tobytes()
    return base64.b64encode(zlib.compress(raw, 1)).decode()


def unpack(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, counts) from `pack`'s text."""
    if not text:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    arr = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<u4").astype(np.int64)
    half = len(arr) // 2
    return np.cumsum(arr[:half]), arr[half:]


def _index(values: np.ndarray) -> np.ndarray:
    """Dense slot of each quantized value: values under 2^(SUB+1) are their own
    slot; above, a value is (v >> m) << m with v >> m in [2^SUB, 2^(SUB+1))."""
    m = np.maximum(np.floor(np.log2(np.maximum(values, 1))).astype(np.int64) - _SUB, 0)
    return (m << _SUB) + (values >> m)


def _value(slots: np.ndarray) -> np.ndarray:
    m = np.maximum((slots >> _SUB) - 1, 0)
    return (slots - (m << _SUB)) << m


class Pending:
    """A worker's values since its last report, per request name (and phase)."""

    def __init__(self) -> None:
        self.latency: dict[str, Counter[int]] = {}
        self.server: dict[str, dict[str, Counter[int]]] = {}

    def add(self, name: str, values: list[int], counts: list[int], phase: str = "") -> None:
        if phase:
            target = self.server.setdefault(name, {}).setdefault(phase, Counter())
        else:
            target = self.latency.setdefault(name, Counter())
        for v, c in zip(values, counts, strict=True):
            target[v] += c

    def take(self, seq: int) -> Delta | None:
        """This interval's delta (None when nothing was recorded); starts the next."""
        names = set(self.latency) | set(self.server)
        if not names:
            return None
        delta = Delta(seq, {
            n: NameDelta(pack(self.latency.get(n, Counter())),
                         {p: pack(c) for p, c in self.server.get(n, {}).items()})
            for n in sorted(names)
        })  # fmt: skip
        self.latency, self.server = {}, {}
        return delta


def _slots(table: dict[str, np.ndarray], key: str) -> np.ndarray:
    """The running counts under `key`, made on first use (not setdefault: that
    would allocate 190 KB per delta and histogram only to throw it away)."""
    slots = table.get(key)
    if slots is None:
        slots = table[key] = np.zeros(_SLOTS, np.int64)
    return slots


class Folded:
    """The master's running merge of every worker's deltas."""

    def __init__(self) -> None:
        self.latency: dict[str, np.ndarray] = {}
        self.server: dict[str, dict[str, np.ndarray]] = {}
        self.seq: dict[str, int] = {}  # per worker: the last delta folded

    def _add(self, slots: np.ndarray, text: str) -> None:
        values, counts = unpack(text)
        if len(values):
            np.add.at(slots, _index(values), counts)

    def fold(self, worker: str, deltas: list[Delta]) -> int:
        """Fold the deltas not yet folded; the worker's last folded number."""
        last = self.seq.get(worker, 0)
        for delta in deltas:
            if delta.seq <= last:
                continue  # folded before: the acknowledgement did not reach the worker in time
            for name, d in delta.names.items():
                self._add(_slots(self.latency, name), d.latency)
                phases = self.server.setdefault(name, {})
                for phase, text in d.server.items():
                    self._add(_slots(phases, phase), text)
            last = delta.seq
        self.seq[worker] = last
        return last

    @staticmethod
    def record(slots: np.ndarray, hist: HdrHistogram) -> None:
        """Add running counts to an HDR histogram (one call per filled bucket)."""
        filled = np.flatnonzero(slots)
        for v, c in zip(_value(filled).tolist(), slots[filled].tolist(), strict=True):
            hist.record_value(v, c)


# Each slot's highest value (µs): what an HDR histogram's recorded iterator reports for it.
_TOPS = _value(np.arange(1, _SLOTS + 1, dtype=np.int64)) - 1


def buckets(slots: np.ndarray, bounds_s: tuple[float, ...]) -> tuple[list[int], float]:
    """Cumulative counts at each bound (seconds) and +Inf, and the sum in seconds,
    straight from running counts: a scrape reads them without building a histogram."""
    filled = np.flatnonzero(slots)
    counts = slots[filled]
    tops_s = _TOPS[filled] / 1e6
    at = np.searchsorted(np.asarray(bounds_s), tops_s, side="left")
    per = np.bincount(at, weights=counts, minlength=len(bounds_s) + 1).astype(np.int64)
    return np.cumsum(per).tolist(), float(np.dot(tops_s, counts))
