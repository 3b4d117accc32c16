"""`locust -f loadgen/` with its web UI, driven through the UI's own HTTP API the
way the browser does: our options are in the form, a run produces its results
folder, and /metrics serves the master's Prometheus metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import LOCUST, ROOT, ServerProcess
from tests.test_loadgen_distributed import free_port

pytestmark = pytest.mark.slow


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def test_web_ui_run(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    srv = start_server("--model", "mlp")
    port = free_port()
    log = open(tmp_path / "locust.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            LOCUST,
            "-f",
            str(ROOT / "loadgen"),
            "--web-host",
            "127.0.0.1",
            "--web-port",
            str(port),
            "--host",
            f"grpc://{srv.address}",
            "--results-dir",
            str(tmp_path / "results"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                page = _get(base + "/")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, (
                    tmp_path / "locust.log"
                ).read_text()
                time.sleep(0.3)
        # the UI carries our options (Locust puts them in the page's template args)
        for option in ("scenario", "slo_file", "batch_size", "protocol", "arrival_rate"):
            assert option in page, option
        plan = tmp_path / "plan.yaml"
        plan.write_text("latency: {duration_s: 4}\n")
        form = {
            "user_count": "1",
            "spawn_rate": "1",
            "host": f"grpc://{srv.address}",
            "scenario": "latency",
            "slo_file": str(plan),
            "run_id": "from-ui",
        }
        req = urllib.request.Request(
            base + "/swarm", data=urllib.parse.urlencode(form).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["success"]
        summary = tmp_path / "results" / "from-ui" / "summary.json"
        deadline = time.monotonic() + 60
        while not summary.exists():
            assert time.monotonic() < deadline, (tmp_path / "locust.log").read_text()[-3000:]
            time.sleep(0.5)
        doc = json.loads(summary.read_text())
        assert doc["verdict"] == "PASS" and doc["scenario"] == "latency"
        metrics = _get(base + "/metrics")
        assert 'modelsoak_client_requests_total{name="latency",run_id="from-ui",status="OK"}' in metrics
        assert "modelsoak_client_request_duration_seconds_bucket" in metrics
        assert 'modelsoak_client_cpu_ratio{run_id="from-ui",worker="local"}' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
    assert proc.returncode == 0, (tmp_path / "locust.log").read_text()[-3000:]
