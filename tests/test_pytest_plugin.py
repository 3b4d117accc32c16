"""The pytest plugin (modelsoak_pytest), loaded through its pytest11 entry point in
pytest subprocesses: markers, options, the assertion message, and the examples/
performance-test template run end to end against real servers and load tests."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pytest(args: list[str], cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)  # fmt: skip


def _outcomes(junit: Path) -> dict[str, str]:
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kids = {c.tag: c for c in case}
        state = "failed" if "failure" in kids or "error" in kids else "skipped" if "skipped" in kids else "passed"
        out[case.get("name", "")] = state + (f": {kids['skipped'].get('message')}" if "skipped" in kids else "")
    return out


def test_markers_options_and_failure_message(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(
        "import pytest\n"
        "from modelsoak_pytest import expect\n\n"
        "@pytest.mark.performance\n"
        "def test_slow_model(modelsoak_duration, modelsoak_results, modelsoak_baseline):\n"
        "    assert modelsoak_duration == 7 and modelsoak_results.is_dir() and modelsoak_baseline is None\n"
        "    expect('p99 latency', 123.4, '<', 100, 'ms', modelsoak_results / 'summary.json')\n\n"
        "@pytest.mark.soak\n"
        "def test_fast(): expect('throughput', 150, '>=', 100, 'samples/s')\n"
    )
    results = tmp_path / "res"
    proc = _pytest(["--strict-markers", "--modelsoak-duration", "7", "--modelsoak-results", str(results),
                    "test_user.py"], tmp_path)  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 1 passed" in proc.stdout
    assert f"p99 latency: measured 123.4 ms, target < 100 ms (report: {results}/summary.json)" in proc.stdout

    bad = _pytest(["--modelsoak-baseline", str(tmp_path / "none.json"), "test_user.py"], tmp_path)
    assert bad.returncode != 0 and "--modelsoak-baseline" in bad.stdout + bad.stderr
    assert "expected a summary.json" in bad.stdout + bad.stderr


def test_training_run_returns_the_typed_summary(tmp_path: Path) -> None:
    (tmp_path / "test_train.py").write_text(
        "from modelsoak_pytest import expect\n\n"
        "def test_smoke(training_run):\n"
        "    run = training_run('check', '--model', 'digits-cnn', '--data', 'digits-cnn', '--checks', 'smoke',\n"
        "                       '--epochs', '1', '--device', 'cpu')\n"
        "    assert run.summary.kind == 'check' and run.summary.verdict == 'PASS', run.output\n"
        "    assert [c.name for c in run.summary.checks] == ['smoke'] and run.path.is_file()\n"
        "    expect('training exit code', run.returncode, '<=', 0, '', run.path)\n"
    )
    proc = _pytest(["--modelsoak-results", str(tmp_path / "res"), "test_train.py"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert list((tmp_path / "res" / "training").glob("*/training_summary.json"))


@pytest.mark.slow
def test_examples_template_runs_on_cpu(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    env = {"MODELSOAK_EXAMPLE_REGRESSION_TOLERANCE": "1.0"}  # a shared CI machine: docs/how-to/ci-regression.md
    proc = _pytest(["examples/", "--modelsoak-duration", "2", "--modelsoak-results", str(tmp_path / "res"),
                    f"--junitxml={junit}", "-q"], ROOT, env, timeout=900)  # fmt: skip
    outcomes = _outcomes(junit)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    expected = {"test_inference_latency", "test_throughput_at_batch_sizes", "test_batch_32_latency",
                "test_peak_inference_memory", "test_regression_against_baseline", "test_long_run_stability",
                "test_concurrency", "test_profiler_trace"}  # fmt: skip
    assert {n for n, o in outcomes.items() if o == "passed"} == expected, outcomes
    gpu = outcomes["test_gpu_latency"]
    assert (gpu.startswith("skipped") and "needs a CUDA GPU" in gpu) or gpu == "passed", gpu
    summaries = sorted((tmp_path / "res" / "load").glob("*/summary.json"))
    assert len(summaries) >= 9  # one per load test the examples ran, each read back typed
