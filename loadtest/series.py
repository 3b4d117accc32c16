"""timeseries.jsonl: one point every --series-interval seconds while a run goes
(written as it goes, so a killed master still leaves its time series)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gevent

from loadtest.codec import SchemaError, from_json, to_json

log = logging.getLogger("modelsoak.loadgen")


@dataclass
class Point:
    """One line of timeseries.jsonl (keys that are None are left out)."""

    t: float  # seconds since the run started
    phase: str
    users: int
    rps: float  # successful requests measured in this interval (HDR counts), per second
    fail_rps: float
    count: int
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    # Streamed requests ended in the interval: time to first token and inter-token latency.
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    itl_p50_ms: float | None = None
    itl_p99_ms: float | None = None
    server_memory: dict[str, float] | None = None
    lost_workers: list[str] | None = None

    def to_line(self) -> str:
        return json.dumps({k: v for k, v in to_json(self).items() if v is not None}) + "\n"


def read_points(path: Path) -> list[Point]:
    """The points of a timeseries.jsonl; a line cut short by a killed process is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(from_json(Point, json.loads(line), str(path)))
        except (json.JSONDecodeError, SchemaError):
            continue
    return out


class SeriesWriter:
    """Appends points every `interval` seconds; `make_points` (the run's) builds them,
    so this module knows points and files, not runs."""

    def __init__(self, path: Path, interval: float, make_points: Callable[[bool], list[Point]]) -> None:
        self.interval = interval
        self.make_points = make_points
        self.file = path.open("a", buffering=1)

    def loop(self) -> None:
        while True:
            gevent.sleep(self.interval)
            try:
                self.write_points()
            except Exception:  # the run's data matters more than one point
                log.exception("writing a time-series point failed")

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()

    def write_points(self, final: bool = False) -> list[Point]:
        points = self.make_points(final)
        if not self.file.closed:
            self.file.write("".join(p.to_line() for p in points))
        return points
