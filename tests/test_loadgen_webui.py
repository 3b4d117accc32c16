"""`locust -f loadgen/` with its web UI, driven through the UI's own HTTP API the
way the browser does: our options are in the form, five runs in a row in one
process (some ending by themselves, some stopped with POST /stop) each write a
results folder of their own with their own numbers, and /metrics serves the
master's Prometheus metrics of the latest run."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from loadtest.results import Summary
from tests.conftest import LOCUST, ROOT, ServerProcess
from tests.loadgen_support import free_port, wait_until

pytestmark = pytest.mark.slow


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def _post(url: str, form: dict[str, str] | None = None) -> dict[str, Any]:
    data = urllib.parse.urlencode(form or {}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=10) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


@dataclass
class WebUI:
    base: str
    results: Path
    log: Path
    proc: subprocess.Popen[str]

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def summaries(self) -> dict[Path, Summary]:
        return {p.parent: Summary.read(p) for p in sorted(self.results.glob("*/summary.json"))}

    def finished(self, runs: int) -> bool:
        return len(self.summaries()) == runs

    def new_run_sent(self, earlier: set[str], n: int) -> bool:
        """Whether /metrics counts `n` successful requests for a run not among `earlier`."""
        found = 0
        for line in _get(self.base + "/metrics").splitlines():
            m = re.match(
                r'modelsoak_client_requests_total\{name="infer",run_id="([^"]+)",status="OK"\} (\S+)', line
            )
            if m and m.group(1) not in earlier:
                found = int(float(m.group(2)))
        return found >= n

    def locust_requests(self) -> int:
        """Locust's own count of this run's requests (its stats restart with every
        run; the CSV, unlike /stats/requests, is not cached for two seconds)."""
        rows = csv.DictReader(io.StringIO(_get(self.base + "/stats/requests/csv")))
        return sum(int(r["Request Count"]) for r in rows if r["Name"] not in ("Aggregated", "warmup"))


@pytest.fixture
def web_ui(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> Iterator[tuple[WebUI, ServerProcess]]:
    srv = start_server("--model", "mlp")
    port = free_port()
    log = tmp_path / "locust.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [LOCUST, "-f", str(ROOT / "loadgen"), "--web-host", "127.0.0.1", "--web-port", str(port),
             "--host", f"grpc://{srv.address}", "--results-dir", str(tmp_path / "results")],
            stdout=out, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        ui = WebUI(f"http://127.0.0.1:{port}", tmp_path / "results", log, proc)
        try:
            wait_until(lambda: _answers(ui.base), 60, "the web UI to answer", ui.tail, proc)
            yield ui, srv
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert proc.returncode == 0, ui.tail()


def _answers(url: str) -> bool:
    try:
        _get(url + "/")
    except OSError:
        return False
    return True


def test_five_runs_in_one_web_ui(web_ui: tuple[WebUI, ServerProcess], tmp_path: Path) -> None:
    ui, srv = web_ui
    page = _get(ui.base + "/")
    # the UI carries our options (Locust puts them in the page's template args)
    for option in ("scenario", "slo_file", "batch_size", "protocol", "arrival_rate", "phase_timeout_s"):
        assert option in page, option
    plan = tmp_path / "plan.yaml"
    # 2 s bound a median but not always a p99 (662 samples at 99 %, loadtest.stats),
    # and this test is about runs starting clean, not about the tail.
    plan.write_text("latency: {duration_s: 2, p99_ms: null, p50_ms: 100}\n")
    form = {"user_count": "2", "spawn_rate": "2", "host": f"grpc://{srv.address}", "slo_file": str(plan)}
    seen: dict[Path, Summary] = {}
    for i in range(5):
        stopped = i % 2 == 1  # runs 2 and 4: plain Locust load until POST /stop
        began = time.time()
        assert _post(ui.base + "/swarm", {**form, "scenario": "none" if stopped else "latency"})["success"]
        if stopped:
            earlier = {x.run_id for x in seen.values()}
            wait_until(partial(ui.new_run_sent, earlier, 50), 60, "requests of the new run", ui.tail, ui.proc)
            _post(ui.base + "/stop")
        wait_until(partial(ui.finished, i + 1), 60, f"the summary of run {i + 1}", ui.tail, ui.proc)
        new = {d: s for d, s in ui.summaries().items() if d not in seen}
        ((folder, s),) = new.items()
        took = time.time() - began
        assert s.run_id == folder.name and s.run_id not in {x.run_id for x in seen.values()}
        assert s.scenario == ("none" if stopped else "latency")
        # from its start to its stop: the scenario's 2 s, or until POST /stop (not the
        # near-zero a run reports that takes the previous run's end for its own)
        assert (0.05 if stopped else 2.0) <= s.duration_s <= took, (s.duration_s, took)
        assert all(s.started >= x.ended for x in seen.values()), "runs overlap"
        # this run's requests only: Locust's own count restarts with every run
        assert s.totals.requests == ui.locust_requests() > 0, s.totals
        assert s.verdict == "PASS", [c for c in s.slo if not c.passed]
        assert [p.name for p in s.phases] == ["infer" if stopped else "latency"]
        assert 0.0 <= s.phases[0].started_s < s.phases[0].ended_s <= s.duration_s + 1e-6
        seen[folder] = s
    last, first = list(seen.values())[-1], next(iter(seen.values()))
    metrics = _get(ui.base + "/metrics")
    assert f'modelsoak_client_requests_total{{name="latency",run_id="{last.run_id}",status="OK"}}' in metrics
    assert f'run_id="{first.run_id}"' not in metrics, "the metrics are those of the latest run"
    assert "modelsoak_client_request_duration_seconds_bucket" in metrics
    assert f'modelsoak_client_cpu_ratio{{run_id="{last.run_id}",worker="local"}}' in metrics
