"""timeseries.jsonl: one point every --series-interval seconds while a run goes
(written as it goes, so a killed master still leaves its time series)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import gevent

from loadtest.codec import SchemaError, from_json, to_json
from loadtest.recorder import decode_into, drop, new_hist

if TYPE_CHECKING:
    from loadtest.run import Run

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
    def __init__(self, run: Run, path: Path) -> None:
        self.run = run
        self.file = path.open("a", buffering=1)

    def loop(self) -> None:
        interval = self.run.options.series_interval if self.run.options else 2.0
        while True:
            gevent.sleep(interval)
            try:
                self.write_point()
            except Exception:  # the run's data matters more than one point
                log.exception("writing a time-series point failed")

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()

    def write_point(self) -> Point:
        run = self.run
        if run.role == "local":
            decode_into(run.window, run.recorder.snapshot().window)
        window, run.window = run.window, new_hist()
        runner = run.environment.runner
        assert runner is not None
        now = time.time()
        span = max(now - run.last_point, 1e-3)
        run.last_point = now
        count = window.get_total_count()
        point = Point(
            t=round(now - run.started, 3),
            phase=run.phase.name if run.phase else "",
            users=runner.user_count,
            rps=round(count / span, 3),
            fail_rps=round(runner.stats.total.current_fail_per_sec, 3),
            count=count,
        )
        if count:
            point.p50_ms, point.p90_ms, point.p95_ms, point.p99_ms = (
                window.get_value_at_percentile(q) / 1000.0 for q in (50, 90, 95, 99)
            )
        if run.watch is not None:
            point.server_memory = run.watch.poll() or None
        if run.lost_workers:
            point.lost_workers = sorted(run.lost_workers)
        drop(window)
        if not self.file.closed:
            self.file.write(point.to_line())
        return point
