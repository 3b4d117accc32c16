"""Percentile confidence and goodput in real runs against the `sleep` model,
whose service time is known: a run whose SLO rests on an unbounded p99 is
INVALID and says how many samples it had and needed; goodput counts exactly
the requests that met the threshold."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from loadtest.stats import min_samples
from tests.conftest import ServerProcess, run_locust

pytestmark = pytest.mark.slow  # two server starts and runs, ~15 s each

SLEEP = ("--model", "sleep", "--param", "sleep_ms=20", "--max-batch-size", "0")
COMMON = ("--scenario", "latency", "--input-shape", "4", "--warmup-requests", "0")


def test_unbounded_p99_makes_the_run_invalid(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = start_server(*SLEEP)
    plan = tmp_path / "plan.yaml"
    # One user, 20 ms a request, 3 s: about 150 samples, far below the 662 a p99 needs at 99 %.
    # Goodput at 5 ms: no request of a 20 ms model can meet it.
    plan.write_text("latency: {users: 1, duration_s: 3, p99_ms: 1000.0}\ngoodput: {latency_ms: 5.0}\n")
    run = run_locust(srv, tmp_path, *COMMON, "--slo-file", str(plan))
    s = run.summary()
    assert run.returncode == 4 and s["verdict"] == "INVALID", run.output[-3000:]
    (phase,) = s["phases"]
    lat = phase["latency_ms"]
    n = lat["count"]
    assert 0 < n < min_samples(0.99, 0.99) and lat["confidence"] == 0.99
    p99 = lat["ci"]["p99"]
    assert p99 == {"n": n, "needed": 662, "low": p99["low"], "high": None, "enough": False}
    # p90 needs 64 samples: bounded, and its interval brackets the 20 ms service time's p90.
    p90 = lat["ci"]["p90"]
    assert p90["enough"] and p90["needed"] == 64 and 20.0 <= p90["low"] <= lat["p90"] <= p90["high"]
    reason = f"latency: p99 not enough samples ({n} of 662)"
    assert any(r.startswith(reason) for r in s["generator"]["invalid_reasons"]), s["generator"]
    report = (run.results / "report.md").read_text()
    assert f"not enough samples ({n} of 662)" in report and "## Percentile confidence" in report
    assert phase["good_requests"] == 0 and phase["goodput_rps"] == 0.0 and phase["goodput_latency_ms"] == 5.0
    assert phase["rps"] > 0
    # The same few samples against a p99 target of 5 ms: every one took 20 ms, so the p99's
    # lower bound is already over the limit. The failure is certain: FAIL, not INVALID.
    (tmp_path / "strict").mkdir()
    plan.write_text("latency: {users: 1, duration_s: 3, p99_ms: 5.0}\n")
    strict = run_locust(srv, tmp_path / "strict", *COMMON, "--slo-file", str(plan))
    t = strict.summary()
    p99 = t["phases"][0]["latency_ms"]["ci"]["p99"]
    assert not p99["enough"] and p99["low"] >= 20.0, p99
    assert strict.returncode == 3 and t["verdict"] == "FAIL", strict.output[-3000:]
    assert [c["name"] for c in t["slo"] if not c["passed"]] == ["latency p99"]
    assert not any("not enough samples" in r for r in t["generator"]["invalid_reasons"]), t["generator"]


def test_goodput_counts_the_requests_within_the_threshold(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = start_server(*SLEEP)
    plan = tmp_path / "plan.yaml"
    # No percentile SLO (p99 off), so the run is judged on errors only and PASSes.
    # Every request of a 20 ms model with one user meets 1 s; none meets 19 ms.
    plan.write_text("latency: {users: 1, duration_s: 2, p99_ms: null}\ngoodput: {latency_ms: 1000.0}\n")
    run = run_locust(srv, tmp_path, *COMMON, "--slo-file", str(plan))
    s = run.summary()
    assert run.returncode == 0 and s["verdict"] == "PASS", run.output[-3000:]
    (phase,) = s["phases"]
    ok = phase["requests"] - phase["failures"]
    assert ok > 0 and phase["good_requests"] == ok
    assert abs(phase["goodput_rps"] - phase["rps"]) < 1e-9
    assert s["totals"]["goodput_rps"] > 0
    report = (run.results / "report.md").read_text()
    assert "Goodput over the run" in report
    # Our server says where its metrics are: memory is watched with no --server-metrics-url.
    assert s["provenance"]["target"]["metrics_url"] == f"http://127.0.0.1:{srv.metrics_port}", s["provenance"]
    assert s["memory"]["available"] and s["memory"]["peak_bytes"] > 0, s["memory"]
    # One user, a 20 ms model, a server that keeps up: the model's compute is the time.
    assert s["diagnosis"].startswith("compute: "), s["diagnosis"]
    share = int(s["diagnosis"].split(": ", 1)[1].split("%")[0])
    assert share >= 70, s["diagnosis"]
    assert f"**Diagnosis: {s['diagnosis']}**" in report
    assert "Add load-generator workers" not in report and "Transport takes" not in report
