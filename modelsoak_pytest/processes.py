"""The real processes behind the fixtures: `modelsoak-server`, `locust -f loadgen/`
and `modelsoak-train`, each read back through its own result types."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loadtest.results import Summary
from training.summary import TrainingSummary

BIN = Path(sys.executable).parent
LOADGEN = Path(__file__).resolve().parent.parent / "loadgen"


class ServedModel:
    """A `python -m server` process on free ports; `host` is what the load generator dials."""

    def __init__(self, args: list[str], workdir: Path, start_timeout_s: float = 300.0) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        stamp = time.monotonic_ns()
        self.port_file = workdir / f"ports-{stamp}.json"
        self.log_path = workdir / f"server-{stamp}.log"
        self.profile_dir = workdir / f"profiles-{stamp}"
        cmd = [sys.executable, "-m", "server", "--grpc-port", "0", "--metrics-port", "0",
               "--port-file", str(self.port_file), "--profile-dir", str(self.profile_dir), *args]  # fmt: skip
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        self.grpc_port = self.metrics_port = 0
        self._wait(start_timeout_s)

    def _wait(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while not self.port_file.exists():  # the server writes it once every port is bound
            if self.proc.poll() is not None:
                raise RuntimeError(f"modelsoak-server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > end:
                self.stop()
                raise TimeoutError(f"modelsoak-server not up within {timeout_s:g} s:\n{self.log()[-3000:]}")
            time.sleep(0.05)  # the interval between two looks at the port file
        ports = json.loads(self.port_file.read_text())
        self.grpc_port, self.metrics_port = int(ports["grpc"]), int(ports["metrics"])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def host(self) -> str:
        return f"grpc://{self.address}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


@dataclass
class LoadResult:
    """A finished headless load test: its typed summary and where its report is."""

    summary: Summary
    path: Path  # summary.json
    returncode: int
    output: str

    @property
    def report(self) -> Path:
        return self.path.parent / "report.html" if (self.path.parent / "report.html").exists() else self.path


def run_load_test(
    host: str, scenario: str, plan: dict[str, Any], results: Path, run_id: str, *extra: str,
    server_metrics_url: str = "", timeout_s: float = 900.0,
) -> LoadResult:  # fmt: skip
    """`locust -f loadgen/ --headless` against `host`; summary.json read back as a Summary."""
    results.mkdir(parents=True, exist_ok=True)
    plan_path = results / f"{run_id}-plan.yaml"
    plan_path.write_text(yaml.safe_dump(plan))
    cmd = [str(BIN / "locust"), "-f", str(LOADGEN), "--headless", "--only-summary", "--host", host,
           "--scenario", scenario, "--slo-file", str(plan_path), "--results-dir", str(results),
           "--run-id", run_id, *extra]  # fmt: skip
    if server_metrics_url:
        cmd += ["--server-metrics-url", server_metrics_url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=results, check=False)
    path = results / run_id / "summary.json"
    output = proc.stdout + proc.stderr
    if not path.exists():
        raise AssertionError(f"load test wrote no {path} (exit {proc.returncode}):\n{output[-3000:]}")
    return LoadResult(Summary.read(path), path, proc.returncode, output)


@dataclass
class TrainingResult:
    """A finished `modelsoak-train` run. `summary` is the check's TrainingSummary
    (training/summary.py); a bench has no typed reader, so `document` holds its
    summary.json as written (training/bench_report.py)."""

    summary: TrainingSummary | None
    document: dict[str, Any]
    path: Path  # training_summary.json (check) or summary.json (bench)
    returncode: int
    output: str


def run_training(command: str, args: list[str], results: Path, run_id: str, timeout_s: float = 900.0) -> TrainingResult:
    """`modelsoak-train check|bench ...`, its summary read back."""
    if command == "check":
        where = ["--out", str(results), "--run", run_id]
        path = results / run_id / "training_summary.json"
    elif command == "bench":
        where = ["--out", str(results / run_id), "--run-id", run_id]
        path = results / run_id / "summary.json"
    else:
        raise ValueError(f"training_run: command {command!r}; expected 'check' or 'bench'")
    cmd = [str(BIN / "modelsoak-train"), command, *args, *where]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    output = proc.stdout + proc.stderr
    if not path.exists():
        raise AssertionError(f"modelsoak-train {command} wrote no {path} (exit {proc.returncode}):\n{output[-3000:]}")
    doc = json.loads(path.read_text())
    summary = TrainingSummary.from_dict(doc) if command == "check" else None
    return TrainingResult(summary, doc, path, proc.returncode, output)
