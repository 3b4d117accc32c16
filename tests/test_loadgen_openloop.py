"""Open loop against the `sleep` model at 1.2x its capacity: latency measured from
the scheduled send time grows with the queue, while closed-loop latency stays
flat because the slow server slows the senders down (coordinated omission)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, run_locust

pytestmark = pytest.mark.slow

SLEEP_MS = 20.0  # one request at a time: capacity 50 requests/s


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _thirds(xs: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last third: one slow point on a busy
    machine moves a mean of several, not the verdict."""
    k = max(len(xs) // 3, 1)
    return _mean(xs[:k]), _mean(xs[-k:])


def _p50s(run_dir: Path) -> list[float]:
    points = [json.loads(line) for line in (run_dir / "timeseries.jsonl").read_text().splitlines()]
    return [p["p50_ms"] for p in points if "p50_ms" in p]


def test_open_loop_latency_grows_closed_loop_stays_flat(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = start_server("--model", "sleep", "--param", f"sleep_ms={SLEEP_MS}", "--max-batch-size", "0")
    common = ("--input-shape", "4", "-t", "12", "--series-interval", "1", "--warmup-requests", "0")
    (tmp_path / "open").mkdir()
    (tmp_path / "closed").mkdir()
    open_run = run_locust(srv, tmp_path / "open", "-u", "200", "-r", "200", "--arrival-rate", "60", *common)
    closed_run = run_locust(srv, tmp_path / "closed", "-u", "4", "-r", "4", *common)
    open_p50, closed_p50 = _p50s(open_run.results), _p50s(closed_run.results)
    assert len(open_p50) >= 8 and len(closed_p50) >= 8
    open_first, open_last = _thirds(open_p50[1:-1])
    closed_first, closed_last = _thirds(closed_p50[1:-1])
    # Open loop: each second 10 more requests arrive than the server can serve, so
    # the queue (and the latency from the scheduled time) keeps growing ...
    assert open_last > 1.5 * open_first, open_p50
    # ... far past what four closed-loop users wait, on the same server.
    assert open_last > 4 * sorted(closed_p50)[len(closed_p50) // 2], (open_p50, closed_p50)
    # Closed loop: four users, each waits its turn; the latency does not build up.
    assert closed_last < 2 * closed_first, closed_p50
    s = open_run.summary()
    ol = s["generator"]["openloop"]
    # The schedule itself: 60/s for 12 s, every send accounted for.
    assert 600 < ol["scheduled"] <= 60 * 12 + 1, ol
    assert ol["scheduled"] == ol["measured"] + ol["dropped"] + ol["unfinished"], ol


def test_open_loop_rate_ramps_up(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    srv = start_server("--model", "sleep", "--param", "sleep_ms=1", "--max-batch-size", "0")
    run = run_locust(
        srv,
        tmp_path,
        "-u",
        "20",
        "-r",
        "20",
        "--arrival-rate",
        "200",
        "--arrival-ramp-s",
        "6",
        "-t",
        "9",
        "--series-interval",
        "1",
        "--input-shape",
        "4",
        "--warmup-requests",
        "0",
    )
    s = run.summary()
    ol = s["generator"]["openloop"]
    # The schedule, whatever the machine's speed: about 200 x k/6 sends in each of
    # the ramp's six seconds (500), then 200/s for three (600); far below 9 s x 200.
    assert 900 <= ol["scheduled"] <= 1250, ol
    assert ol["scheduled"] == ol["measured"] + ol["dropped"] + ol["unfinished"], ol
    points = [json.loads(line) for line in (run.results / "timeseries.jsonl").read_text().splitlines()]
    rates = [p["rps"] for p in points]
    # a rising ramp (about 33 req/s more each second), then the full rate
    first, last = _thirds(rates[1:-1])
    assert rates[1] < 0.6 * max(rates) and last > 1.5 * first, rates
