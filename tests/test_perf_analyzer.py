"""Triton's own perf_analyzer, unchanged, load-tests our server: it reads
ModelMetadata and ModelConfig before it sends, ModelStatistics for the server
side, and our /metrics for Triton's GPU metric names."""

from __future__ import annotations

import csv
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerProcess

PA = ROOT / ".tools" / "perf_analyzer"

pytestmark = pytest.mark.slow


def test_perf_analyzer_against_our_server(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    binary = PA / "bin" / "perf_analyzer"
    assert binary.exists(), "run `make test` (or python tools/fetch_perf_analyzer.py) to fetch perf_analyzer"
    srv = start_server("--model", "mlp")
    out = tmp_path / "pa.csv"
    run = subprocess.run(
        [
            str(binary),
            "-m",
            "mlp",
            "-u",
            srv.address,
            "-i",
            "grpc",
            "-b",
            "2",
            "--concurrency-range",
            "1:2",
            "--measurement-interval",
            "1500",
            # This checks that perf_analyzer works with our server, not how steady a
            # shared machine is: its default 10 % stability rule fails on a busy one.
            "--stability-percentage",
            "50",
            "--collect-metrics",
            "--metrics-url",
            f"{srv.metrics_url}/metrics",
            "-f",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "LD_LIBRARY_PATH": str(PA / "lib")},
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Server:" in run.stdout and "Inference count:" in run.stdout
    rows = list(csv.DictReader(out.open()))
    assert [int(r["Concurrency"]) for r in rows] == [1, 2]
    assert all(float(r["Inferences/Second"]) > 0 for r in rows)
    # server-side columns come from our ModelStatistics
    assert all(float(r["Server Compute Infer"]) > 0 for r in rows)
