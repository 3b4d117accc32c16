"""Warm-up is defined per run (loadtest.warmup): `--warmup-requests` counts the
run's first requests across all users and workers, `--warmup-s` the first
seconds of its load, the same in open and closed loop; the summary and the
report say what was left out. Real server, real Locust processes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, run_locust


@pytest.fixture(scope="module")
def mlp(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_module_server("--model", "mlp")


def locust_warmup_count(output: str) -> int:
    """Locust's own count of the requests it saw named "warmup" (its final table)."""
    rows = [line.split() for line in output.splitlines() if line.startswith("grpc ") and "|" in line]
    return sum(int(r[2]) for r in rows if r[1] == "warmup")


def test_open_loop_with_many_users_excludes_only_the_requests_asked(mlp: ServerProcess, tmp_path: Path) -> None:
    # 120 users, 15 warm-up requests: counted per user this would leave out
    # 1,800, more than the run sends at all.
    run = run_locust(mlp, tmp_path, "-u", "120", "-r", "60", "--arrival-rate", "60", "-t", "4",
                     "--warmup-requests", "15")  # fmt: skip
    s = run.summary()
    assert s["warmup"] == {"seconds": 0.0, "requests": 15, "excluded": 15}, s["warmup"]
    ol = s["generator"]["openloop"]
    assert ol["warmup"] == 15 and ol["accounted"], ol
    assert locust_warmup_count(run.output) == 15, run.output[-3000:]
    # Everything else measured is in the statistics.
    statused = s["totals"]["requests"]
    assert statused + 15 == ol["measured"] + ol["unfinished"], (s["totals"], ol)
    report = (run.results / "report.md").read_text()
    assert "Warm-up: 15 requests left out of the statistics: the run's first 15 requests" in report


def test_closed_loop_warmup_by_time(mlp: ServerProcess, tmp_path: Path) -> None:
    run = run_locust(mlp, tmp_path, "-u", "4", "-r", "4", "-t", "5",
                     "--warmup-requests", "0", "--warmup-s", "2", "--series-interval", "0.5")  # fmt: skip
    s = run.summary()
    w = s["warmup"]
    assert w["seconds"] == 2.0 and w["requests"] == 0 and w["excluded"] > 0, w
    assert locust_warmup_count(run.output) == w["excluded"], run.output[-3000:]
    # The time series counts only what the statistics count: nothing recorded
    # before the warm-up's end, and load after it.
    points = [json.loads(line) for line in (run.results / "timeseries.jsonl").read_text().splitlines()]
    early = [p for p in points if p["t"] < 1.9]
    assert early and all(p["count"] == 0 for p in early), points
    assert any(p["count"] > 0 for p in points if p["t"] > 2.0), points
    assert s["totals"]["requests"] > 0
    report = (run.results / "report.md").read_text()
    assert f"Warm-up: {w['excluded']} requests left out of the statistics: every request sent in its first 2 s" in report
    assert "Warm-up:" in run.output  # the verdict table says it too
