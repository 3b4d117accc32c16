"""timeseries.jsonl: one point every --series-interval seconds while a run goes
(written as it goes, so a killed master still leaves its time series)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import gevent

from loadtest.recorder import new_hist

if TYPE_CHECKING:
    from loadtest.run import Run

log = logging.getLogger("modelsoak.loadgen")


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

    def write_point(self) -> dict[str, object]:
        run = self.run
        if run.role == "local":
            snap = run.recorder.snapshot()
            if snap.window:
                run.window.decode_and_add(snap.window.encode())
        window, run.window = run.window, new_hist()
        runner = run.environment.runner
        assert runner is not None
        now = time.time()
        span = max(now - run.last_point, 1e-3)
        run.last_point = now
        count = window.get_total_count()
        point: dict[str, object] = {
            "t": round(now - run.started, 3),
            "phase": run.phase.name if run.phase else "",
            "users": runner.user_count,
            # successful requests measured in this interval (HDR counts), per second
            "rps": round(count / span, 3),
            "fail_rps": round(runner.stats.total.current_fail_per_sec, 3),
            "count": count,
        }
        if count:
            for q in (50, 90, 95, 99):
                point[f"p{q}_ms"] = window.get_value_at_percentile(q) / 1000.0
        if run.watch is not None:
            mem = run.watch.poll()
            if mem:
                point["server_memory"] = mem
        if run.lost_workers:
            point["lost_workers"] = sorted(run.lost_workers)
        if not self.file.closed:
            self.file.write(json.dumps(point) + "\n")
        return point
