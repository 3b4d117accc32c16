"""Distributed runs: one Locust master and two workers as real processes; a lost
worker, a killed master, and Locust's --processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.recorder import Snapshot
from server.netutil import free_port
from tests.conftest import ServerProcess, locust_cmd, master_cmd, worker_cmd
from tests.loadgen_support import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlp(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_module_server("--model", "mlp")


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, cmd: list[str], name: str) -> subprocess.Popen[str]:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - the process owns it until the end
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.tmp,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.procs.append(proc)
        return proc

    def master(self, server: ServerProcess, port: int, *args: str) -> subprocess.Popen[str]:
        return self.spawn(master_cmd(server, self.tmp, port, 2, *args), "master")

    def worker(self, port: int, name: str) -> subprocess.Popen[str]:
        return self.spawn(worker_cmd(port), name)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.stop_all()


def _points(series: Path) -> list[dict[str, Any]]:
    """The time series so far (a line being written may be cut short)."""
    if not series.exists():
        return []
    out = []
    for line in series.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def _plan(tmp: Path, text: str) -> str:
    path = tmp / "plan.yaml"
    path.write_text(text)
    return str(path)


def test_master_and_two_workers(mlp: ServerProcess, cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    master = cluster.master(
        mlp,
        port,
        "--scenario",
        "throughput",
        "--slo-file",
        _plan(tmp_path, "throughput: {phase_s: 2, users: 4}\n"),
    )
    workers = [cluster.worker(port, f"worker{i}") for i in range(2)]
    assert master.wait(120) == 0, cluster.log("master")[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(summary["provenance"]["workers"]) == 2
    assert summary["verdict"] == "PASS" and not summary["generator"]["lost_workers"]
    assert len(summary["generator"]["workers"]) == 2
    for cpu in summary["generator"]["workers"].values():  # each worker watched its own CPU
        assert 0 < cpu["cpu_mean"] <= cpu["cpu_max"], summary["generator"]
    master_cpu = summary["generator"]["master"]  # and the master its own, and its event loop
    assert master_cpu["cpu_max"] > 0 and 0 <= master_cpu["loop_lagged_fraction"] < 1, master_cpu
    # the master merged both workers: its totals match Locust's own count (warm-ups apart)
    locust_total = sum(
        int(line.split()[2])
        for line in cluster.log("master").splitlines()
        if line.startswith("grpc ") and "throughput[" in line and "|" in line  # the counts table
    )
    assert summary["totals"]["requests"] == locust_total
    # Workers that were not saturated are not told to be more: no advice without its premise.
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Add load-generator workers" not in report and summary["diagnosis"], summary["diagnosis"]
    for w in workers:
        assert w.wait(60) == 0


@pytest.mark.faults
@pytest.mark.parametrize("rebalance", [True, False], ids=["rebalanced", "no-rebalance"])
def test_lost_worker_is_named_and_its_users_moved_or_the_reduced_load_shown(
    mlp: ServerProcess, cluster: Cluster, tmp_path: Path, rebalance: bool
) -> None:
    port = free_port()
    master = cluster.master(
        mlp,
        port,
        "--scenario",
        "soak",
        "--slo-file",
        _plan(tmp_path, "soak: {users: 4, duration_s: 20, leak_warmup_s: 1}\n"),
        *([] if rebalance else ["--no-rebalance"]),
    )
    workers = [cluster.worker(port, f"worker{i}") for i in range(2)]
    # Kill one once the master has measured load from both (a time-series point
    # with all four users and requests in it).
    series = tmp_path / "run" / "timeseries.jsonl"
    wait_until(lambda: any(p["users"] == 4 and p["count"] > 0 for p in _points(series)), 60,
               "a time-series point with both workers sending", lambda: cluster.log("master"), master)  # fmt: skip
    workers[0].send_signal(signal.SIGKILL)
    assert master.wait(120) == 4, cluster.log("master")[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    lost = summary["generator"]["lost_workers"]
    assert len(lost) == 1, summary["generator"]
    assert [e["detail"] for e in summary["events"] if e["kind"] == "worker_lost"] == lost, summary["events"]
    assert summary["verdict"] == "INVALID"
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"worker {lost[0]} was lost" in report
    assert 'id="throughput-event-worker-lost-' in (tmp_path / "run" / "report.html").read_text()  # on the charts
    assert summary["totals"]["requests"] > 0  # what the lost worker measured before it died still counts
    soak = next(p for p in summary["phases"] if p["kind"] == "soak")
    assert soak["users_running_min"] == 2, soak  # the survivor's two, until (or unless) rebalanced
    last = [p for p in _points(series) if p["users"] > 0][-1]  # the last before the users stop
    reasons = " ".join(summary["generator"]["invalid_reasons"])
    if rebalance:
        # Locust's master moved the lost worker's users to the survivor: four again.
        assert last["users"] == 4, last
        assert soak["reduced_load_s"] < 8, soak
    else:
        assert last["users"] == 2, last
        # Short from the loss until the phase ended (sampled each second), however
        # late the kill came on a loaded machine.
        lost_at = next(e["t_s"] for e in summary["events"] if e["kind"] == "worker_lost")
        assert abs(soak["reduced_load_s"] - (soak["ended_s"] - lost_at)) <= 1.5, (soak, lost_at)
        assert "its users were not moved (--no-rebalance)" in reasons, reasons
        assert f"(only 2 for {soak['reduced_load_s']:.0f} s)" in report
    if soak["reduced_load_s"] >= 1:
        assert f"{soak['name']} ran with 2 of 4 users for" in reasons, reasons


@pytest.mark.faults
def test_killed_master_leaves_the_time_series(mlp: ServerProcess, cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    master = cluster.master(
        mlp,
        port,
        "--scenario",
        "soak",
        "--series-interval",
        "0.5",
        "--slo-file",
        _plan(tmp_path, "soak: {users: 2, duration_s: 60}\n"),
    )
    workers = [cluster.worker(port, f"worker{i}") for i in range(2)]
    series = tmp_path / "run" / "timeseries.jsonl"
    wait_until(
        lambda: len(_points(series)) >= 6, 60, "six time-series points", lambda: cluster.log("master"), master
    )
    master.send_signal(signal.SIGKILL)
    master.wait(30)
    points = _points(series)
    assert len(points) >= 6
    assert any(p.get("count", 0) > 0 and "p99_ms" in p for p in points)
    # Points come from request times, merged across workers: with a report every 3 s
    # and a point every 0.5 s, points cut by report arrival would be empty five times
    # in six; by request time, a steady load draws a steady line.
    counts = [p["count"] for p in points]
    first = next(i for i, c in enumerate(counts) if c)
    assert sum(1 for c in counts[first:] if c == 0) <= len(counts[first:]) // 4, counts
    assert not (tmp_path / "run" / "summary.json").exists()
    # The workers notice within --master-timeout-s (5 s), stop sending, keep what
    # they measured and exit 4 (Locust alone would load the server for 60 s more
    # and exit 0). The 30 s bound is a deadline for the event, not a speed check.
    for i, worker in enumerate(workers):
        assert worker.wait(30) == 4, cluster.log(f"worker{i}")[-2000:]
        assert "no heartbeat from the master" in cluster.log(f"worker{i}")
    saved = sorted(tmp_path.glob("lost-master-*.json"))
    assert len(saved) == 2, list(tmp_path.iterdir())
    for path in saved:
        doc = json.loads(path.read_text())
        assert Snapshot.unpack(doc["snapshot"]).run_id == "run"
        assert doc["master_silent_s"] > 5.0


def test_processes_flag(mlp: ServerProcess, tmp_path: Path) -> None:
    cmd = locust_cmd(
        mlp,
        tmp_path,
        "--processes",
        "2",
        "--scenario",
        "latency",
        "--slo-file",
        _plan(tmp_path, "latency: {duration_s: 4, users: 2}\n"),
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(summary["provenance"]["workers"]) == 2
