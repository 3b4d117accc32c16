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
    # Open loop: each second 10 more requests arrive than the server can serve.
    assert open_p50[-2] > 4 * open_p50[1], open_p50
    # Closed loop: four users, each waits its turn; the latency does not build up.
    assert max(closed_p50[1:-1]) < 2 * min(closed_p50[1:-1]), closed_p50
    s = open_run.summary()
    ol = s["generator"]["openloop"]
    assert ol["scheduled"] > 600 and s["generator"]["valid"], ol


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
    assert run.returncode == 0, run.output[-2000:]
    points = [json.loads(line) for line in (run.results / "timeseries.jsonl").read_text().splitlines()]
    rates = [p["rps"] for p in points]
    # a rising ramp (about 33 req/s more each second), then the full rate
    assert rates[1] < 0.6 * max(rates) and max(rates) > 150, rates
    assert rates[5] > rates[1], rates
