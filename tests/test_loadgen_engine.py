"""Where the calls are made (--client-engine): the request engine (loadtest.engine)
with its unary calls in C (native, what auto picks where it builds) or on grpc.aio
(process), or each user's own call under gevent. Real `locust -f loadgen/` runs
against the `sleep` model, whose time is known; every path must give the same
figures, and the log says which one made the calls."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, run_locust

ENGINE_LINE = "request engine started (pid"
NATIVE_LINE = "unary calls in C over libnghttp2"


@pytest.fixture(scope="module")
def sleepy(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_module_server("--model", "sleep", "--param", "sleep_ms=10", "--max-batch-size", "1")


@pytest.mark.parametrize("engine", ["native", "process", "gevent"])
def test_closed_loop_on_every_path_measures_the_model(
    sleepy: ServerProcess, tmp_path: Path, engine: str
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("latency: {p99_ms: null, p50_ms: 50.0}\n")  # 3 s bound a median, not a p99
    run = run_locust(sleepy, tmp_path, "-u", "1", "-t", "3", "--input-shape", "4", "--warmup-requests", "0",
                     "--client-engine", engine, "--slo-file", str(plan))  # fmt: skip
    s = run.summary()
    assert run.returncode == 0 and s["verdict"] == "PASS", run.output[-3000:]
    # The engine's start is in the log, and where it makes its calls; under gevent there is none.
    assert (ENGINE_LINE in run.output) == (engine != "gevent"), run.output[-3000:]
    assert (NATIVE_LINE in run.output) == (engine == "native"), run.output[-3000:]
    (phase,) = s["phases"]
    # One user back to back on a 10 ms model: about 90 requests/s, each 10 ms and a little.
    assert phase["requests"] > 150 and phase["failures"] == 0, phase
    p50 = phase["latency_ms"]["p50"]
    assert 10.0 <= p50 < 15.0, phase["latency_ms"]
    # The server's own breakdown came back through either path.
    b = s["server_breakdown"]
    assert b["available"] and b["mean_ms"] and 0 < b["transport_ms"] < p50, b


@pytest.mark.parametrize("engine", ["native", "process", "gevent"])
def test_open_loop_on_every_path_keeps_its_schedule(
    sleepy: ServerProcess, tmp_path: Path, engine: str
) -> None:
    # 50/s offered to a 10 ms model that takes ~90/s on one connection: four slots keep up.
    plan = tmp_path / "plan.yaml"
    plan.write_text("latency: {p99_ms: null, p50_ms: 50.0}\n")
    run = run_locust(sleepy, tmp_path, "-u", "4", "-t", "4", "--input-shape", "4", "--warmup-requests", "0",
                     "--arrival-rate", "50", "--client-engine", engine, "--slo-file", str(plan))  # fmt: skip
    s = run.summary()
    ol = s["generator"]["openloop"]
    reasons = s["generator"]["invalid_reasons"]
    # On a busy machine the generator may fall behind; then INVALID says so, for that reason only.
    assert all("fell behind" in r or "short of CPU" in r for r in reasons), reasons
    assert (s["verdict"], run.returncode) == (("INVALID", 4) if reasons else ("PASS", 0)), run.output[-3000:]
    assert ol["accounted"] and ol["scheduled"] == ol["measured"] + ol["dropped"] + ol["unfinished"], ol
    # The schedule ends at -t: at most 4 s of 50/s (one send of slack), and it began on time.
    assert 150 <= ol["scheduled"] <= 201, ol
    # The lag distribution is read off the counted sends: median <= p99 <= worst bucket.
    assert 0 < ol["behind_p50_ms"] <= ol["behind_p99_ms"], ol
    assert ol["behind_p99_ms"] <= max(ol["max_behind_ms"], 0.1) * 2.5 + 0.1, ol
    (phase,) = s["phases"]
    assert 10.0 <= phase["latency_ms"]["p50"] < 15.0, phase["latency_ms"]
    # The report states the lag distribution.
    report = (run.results / "report.md").read_text()
    assert f"≤ {ol['behind_p50_ms']:g} ms at the median" in report, report
