"""The training process's live Prometheus metrics (served while it trains, promtool clean,
its own registry) and the summary it pushes to a real Pushgateway."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from training.bench import BenchOptions, EpochRecord, LiveRun, Workload, train_run
from training.losses import make_loss
from training.models import DigitsCNN, resolve_data
from training.monitor import TrainingMonitor

ROOT = Path(__file__).resolve().parent.parent


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def _value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in the scrape")


class ScrapeEachEpoch:
    """A second hook: reads /metrics over HTTP while the run is between epochs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.texts: list[str] = []

    def on_steps(self, run: LiveRun) -> None:
        pass

    def on_epoch(self, run: LiveRun, epoch: EpochRecord) -> None:
        self.texts.append(_scrape(self.port))


def test_metrics_are_live_while_training_and_promtool_clean() -> None:
    train, val = resolve_data(None, "digits-cnn")
    work = Workload("digits-cnn", DigitsCNN, train, val, make_loss("cross_entropy"))
    reg = CollectorRegistry()
    mon = TrainingMonitor("mon-test", "digits-cnn", port=0, addr="127.0.0.1", registry=reg)
    try:
        assert mon.port
        probe = ScrapeEachEpoch(mon.port)
        run = train_run(work, BenchOptions(epochs=2, grad_norm=True), hooks=[mon, probe])
        mon.finish()
        final = _scrape(mon.port)
    finally:
        mon.close()
    assert len(probe.texts) == 2
    first = probe.texts[0]
    # after epoch 1: 45 steps of 32 (the last one 29)
    assert _value(first, "modelsoak_training_steps_total", run_id="mon-test", rank="0") == 45
    assert _value(first, "modelsoak_training_samples_total") == 1437
    assert _value(first, "modelsoak_training_running") == 1
    assert _value(final, "modelsoak_training_steps_total") == len(run.steps) == 90
    assert _value(final, "modelsoak_training_running") == 0
    assert _value(final, "modelsoak_training_step_duration_seconds_count") == 90
    for phase in ("data", "h2d", "forward", "backward", "optimizer"):
        assert _value(final, "modelsoak_training_step_phase_seconds_total", phase=phase) > 0
    assert _value(final, "modelsoak_training_validation_accuracy_ratio") == run.epochs[-1].accuracy
    assert _value(final, "modelsoak_training_loss") == pytest.approx(run.losses[-1])
    assert _value(final, "modelsoak_training_grad_norm") > 0
    assert _value(final, "modelsoak_training_memory_bytes", kind="rss") > 0
    assert _value(final, "modelsoak_training_gpu_metrics_info", status="absent", reason="no GPU") == 1
    assert "modelsoak_training_gpu_utilization_ratio" not in final  # no invented zeros
    assert not [
        n for n in re.findall(r"^# TYPE (\S+)", final, re.M) if not n.startswith("modelsoak_training_")
    ]
    assert "modelsoak_training_" not in _global_registry_text()  # our own registry, never the global one
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (make system-deps)"
    out = subprocess.run([promtool, "check", "metrics"], input=final.encode(), capture_output=True)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr


def _global_registry_text() -> str:
    from prometheus_client import generate_latest

    return generate_latest(REGISTRY).decode()


@pytest.mark.slow
def test_a_bench_run_pushes_its_summary_to_the_pushgateway(tmp_path: Path) -> None:
    from exporters.stack import start_pushgateway

    gateway = start_pushgateway(tmp_path / "pg", "127.0.0.1:0")
    try:
        cmd = [
            sys.executable, "-m", "training.bench_cli", "bench", "--model", "digits-cnn", "--epochs", "2",
            "--run-id", "pushed-train", "--pushgateway", gateway.url, "--out", str(tmp_path / "out"),
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280, check=False)
        assert proc.returncode == 4, proc.stdout + proc.stderr
        s: dict[str, Any] = json.loads((tmp_path / "out" / "summary.json").read_text())
        with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        gateway.stop()
    sel = {"job": "modelsoak-training", "run_id": "pushed-train"}
    assert _value(text, "modelsoak_training_run_exit_code", **sel) == 4
    assert _value(text, "modelsoak_training_run_passed", **sel) == 0
    assert _value(text, "modelsoak_training_run_samples_per_second", **sel) == pytest.approx(
        s["steps"]["samples_per_s"]
    )
    assert (
        _value(text, "modelsoak_training_run_check_passed", check="GPU utilisation", status="NOT MEASURED")
        == 0
    )
    assert _value(text, "modelsoak_training_run_check_passed", check="epoch time", status="PASS") == 1
