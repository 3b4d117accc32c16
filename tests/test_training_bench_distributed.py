"""Data-parallel bench runs: 2 CPU processes under torchrun (gloo), per-rank records
merged into one report, and the scaling efficiency against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on a small machine: no oversubscription

pytestmark = pytest.mark.slow


def _torchrun(tmp: Path, nproc: int, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "training.bench_cli", "bench", "--model", "digits-cnn", "--device", "cpu", "--out", str(tmp), *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=280, check=False)
    summary = tmp / "summary.json"
    assert summary.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(summary.read_text())


def test_two_processes_under_torchrun_merge_into_one_report(tmp_path: Path) -> None:
    proc, s = _torchrun(tmp_path, 2, "--epochs", "2", "--warmup-steps", "3")
    assert s["world_size"] == 2
    assert [r["rank"] for r in s["ranks"]] == [0, 1]
    # DistributedSampler: each rank gets half of the 1,437 samples (padded to 719), 23 steps per epoch
    assert s["steps"]["count"] == 2 * (2 * 23 - 3)
    assert [e["samples"] for e in s["epochs"]] == [1438, 1438]
    assert s["steps"]["samples_per_s"] == pytest.approx(sum(r["samples_per_s"] for r in s["ranks"]))
    for r in s["ranks"]:
        assert r["samples_per_s"] > 0 and sum(r["shares"].values()) == pytest.approx(1.0, abs=0.02)
    assert s["verdict"] == "INCOMPLETE"  # the GPU row on a CPU
    # Only rank 0 reports; every rank exits with the verdict's code, so torchrun fails the launch.
    assert proc.stdout.count("verdict: INCOMPLETE (exit 4)") == 1
    assert proc.returncode != 0
    # gradients were averaged: the model still learns
    assert s["epochs"][-1]["accuracy"] > 0.5


def test_scaling_efficiency_against_one_process(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "training.bench_cli", "bench", "--model", "digits-cnn", "--device", "cpu",
        "--epochs", "1", "--no-eval", "--nproc-per-node", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=280, check=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    one = json.loads((tmp_path / "nproc-1" / "summary.json").read_text())
    assert one["world_size"] == 1 and s["world_size"] == 2
    sc = s["scaling"]
    assert sc["one_process_samples_per_s"] == pytest.approx(one["steps"]["samples_per_s"])
    assert sc["efficiency"] == pytest.approx(sc["samples_per_s"] / (2 * sc["one_process_samples_per_s"]))
    assert sc["efficiency"] > 0
    assert "scaling: 2 processes, efficiency" in proc.stdout
    assert proc.returncode == s["exit_code"] == 4  # the verdict's code, not torchrun's
