"""Time slices and latency drift against the `sleep` model (20 ms a request,
one at a time: capacity 50/s). Offered 70/s open loop, the queue and so the
latency grow every second: the soak's p99 trend must be judged a drift. Offered
20/s, nothing queues: no drift. Slices carry their own throughput and
percentiles, and the report plots them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, run_locust

pytestmark = pytest.mark.slow  # two 12 s soaks

PLAN = "soak: {users: 8, duration_s: 12, leak_warmup_s: 2, drift_warmup_s: 1.0, drift_min_slices: 8}\n"


def _soak(srv: ServerProcess, where: Path, rate: str) -> dict:
    where.mkdir()
    plan = where / "plan.yaml"
    plan.write_text(PLAN)
    run = run_locust(
        srv, where, "--scenario", "soak", "--slo-file", str(plan), "--input-shape", "4",
        "--warmup-requests", "0", "--arrival-rate", rate, "--slice-s", "1", "--series-interval", "0.5",
    )  # fmt: skip
    s = run.summary()
    assert s["slices"], run.output[-3000:]
    return s


def test_overload_drifts_and_a_light_load_does_not(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = start_server("--model", "sleep", "--param", "sleep_ms=20", "--max-batch-size", "0")
    over = _soak(srv, tmp_path / "over", "70")
    light = _soak(srv, tmp_path / "light", "20")
    for s in (over, light):
        slices = [x for x in s["slices"] if x["phase"] == "soak"]
        assert len(slices) >= 10
        assert all(x["t_end"] > x["t_start"] and x["rps"] > 0 for x in slices)
        # Every latency recorded lies in one slice (sends unfinished at stop enter with their wait so far).
        recorded = sum(p["statuses"].get("OK", 0) + p["statuses"].get("UNFINISHED", 0) for p in s["phases"])
        assert sum(x["requests"] for x in s["slices"]) == recorded
        assert all(x["p50_ms"] >= 20.0 for x in slices)  # never faster than the model's sleep
    check = {c["name"]: c for c in over["slo"]}["latency drift"]
    assert over["drift"]["suspected"] and not check["passed"], over["drift"]
    assert over["drift"]["slope_ms_per_hour"] > 0
    light_check = {c["name"]: c for c in light["slo"]}["latency drift"]
    assert not light["drift"]["suspected"] and light_check["passed"], light["drift"]
    # The light load is served in the model's time: its slices' throughput is the offered rate.
    mid = [x["rps"] for x in light["slices"][2:-2]]
    assert all(14 <= r <= 26 for r in mid), mid
    report = (tmp_path / "over" / "run" / "report.md").read_text()
    assert "## Time slices" in report and "Latency drift over the soak: DRIFT" in report
    assert "Latency per time slice" in (tmp_path / "over" / "run" / "report.html").read_text()
