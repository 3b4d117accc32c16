"""A target killed mid-run (SIGKILL): the users back off while it refuses
connections, the verdict is FAIL (exit 3) naming when it became unreachable,
and what was measured until then is kept."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, locust_cmd
from tests.loadgen_support import wait_until

pytestmark = pytest.mark.slow


def _answered(series: Path) -> bool:
    if not series.exists():
        return False
    return any(json.loads(line).get("count", 0) > 0 for line in series.read_text().splitlines() if line)


@pytest.mark.faults
def test_killed_target_fails_the_run_and_users_back_off(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = start_server("--model", "sleep", "--param", "sleep_ms=2", "--max-batch-size", "1")
    cmd = locust_cmd(srv, tmp_path, "-u", "8", "-r", "8", "-t", "8", "--input-shape", "4",
                     "--series-interval", "0.5", "--warmup-requests", "0")  # fmt: skip
    log = tmp_path / "locust.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        try:
            wait_until(lambda: _answered(tmp_path / "run" / "timeseries.jsonl"), 60, "answered requests",
                       log.read_text, proc)  # fmt: skip
            srv.proc.kill()  # SIGKILL: no goodbye to the clients
            srv.proc.wait()
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    output = log.read_text()
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert proc.returncode == 3 and s["verdict"] == "FAIL", output[-3000:]
    check = next(c for c in s["slo"] if c["name"] == "target reachable")
    m = re.fullmatch(r"target unreachable from t=([\d.]+) s for ([\d.]+) s, (\d+) requests failed", check["actual"])
    assert m, check
    failed = int(m.group(3))
    # The charts' marker: an "unreachable" event from the same moment.
    (gone,) = [e for e in s["events"] if e["kind"] == "unreachable"]
    assert abs(gone["t_s"] - float(m.group(1))) < 0.5 and gone["duration_s"] > 0, s["events"]
    assert [e["detail"] for e in s["events"] if e["kind"] == "phase"] == [p["name"] for p in s["phases"]]
    # Results up to the kill are kept.
    assert s["totals"]["requests"] - s["totals"]["failures"] > 0, s["totals"]
    # Backed off: a handful of calls per user while the target is gone, not a hot loop
    # (2 s cap: under ~20 calls per user for the rest of an 8 s run).
    assert 0 < failed <= 8 * 20, check
    assert not any("CPU-saturated" in r for r in s["generator"]["invalid_reasons"]), s["generator"]
    # The report's charts mark the outage as a span, and the error SLO broken where failures began.
    html = (tmp_path / "run" / "report.html").read_text()
    assert 'id="throughput-event-unreachable-' in html and 'id="latency-event-slo-' in html
