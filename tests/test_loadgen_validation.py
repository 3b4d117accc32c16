"""Before any load: every option and the whole plan checked by a real
`locust -f loadgen/ --headless` process (exit 2, naming the option, what was
given and what is expected); and every threshold an SLO file sets is judged by
the run, or refused before it starts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, run_locust


@pytest.fixture(scope="module")
def sleepy(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_module_server("--model", "sleep", "--param", "sleep_ms=2", "--max-batch-size", "1")


def _refused_before_load(run_output: str, returncode: int) -> None:
    assert returncode == 2, run_output[-3000:]
    # Refused at Locust's init: the test never started, no user was spawned.
    assert "Shape test starting" not in run_output and "Ramping to" not in run_output, run_output[-3000:]
    assert "Traceback" not in run_output, run_output[-3000:]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--input-shape", "3x0"), ["--input-shape", "'3x0'", "at least 1"]),
        (("--input-shape", "3xfoo"), ["--input-shape", "'3xfoo'", "3x224x224"]),
        (("--arrival-rate", "-5"), ["--arrival-rate", "-5", "at least 0"]),
        (("--max-pending", "0"), ["--max-pending", "0", "at least 1"]),
    ],
)
def test_bad_option_refused_before_any_user(
    sleepy: ServerProcess, tmp_path: Path, args: tuple[str, ...], named: list[str]
) -> None:
    run = run_locust(sleepy, tmp_path, "-u", "2", "-t", "3", *args)
    _refused_before_load(run.output, run.returncode)
    line = next(x for x in run.output.splitlines() if "could not start" in x)
    assert all(n in line for n in named), line


def test_a_shape_with_the_batch_dim_is_refused_with_the_shape_expected(
    sleepy: ServerProcess, tmp_path: Path
) -> None:
    # The sleep model's input is [-1, -1]: a batch dim, then one dim per sample.
    run = run_locust(sleepy, tmp_path, "-u", "1", "-t", "3", "--input-shape", "1x4")
    assert run.returncode == 2 and "Traceback" not in run.output, run.output[-3000:]
    line = next(x for x in run.output.splitlines() if "could not start" in x)
    assert "--input-shape 1x4 does not fit input 'INPUT0' of shape [-1, -1]" in line, line
    assert "1 dim(s) of one sample after its batch dim" in line and "e.g. --input-shape 4" in line, line


def test_plain_run_judges_the_latency_threshold(sleepy: ServerProcess, tmp_path: Path) -> None:
    plan = tmp_path / "slo.yaml"
    plan.write_text("latency: {p99_ms: 0.001}\n")
    run = run_locust(sleepy, tmp_path, "-u", "1", "-t", "2", "--input-shape", "4", "--slo-file", str(plan))
    s = run.summary()
    checks = {c["name"]: c for c in s["slo"]}
    assert "latency p99" in checks and not checks["latency p99"]["passed"], checks
    assert s["verdict"] == "FAIL" and run.returncode == 3, run.output[-3000:]


def test_threshold_a_plain_run_cannot_judge_is_refused(sleepy: ServerProcess, tmp_path: Path) -> None:
    plan = tmp_path / "slo.yaml"
    plan.write_text("soak: {p99_ms: 50.0}\nregression: {max_p99_increase: 0.2}\n")
    run = run_locust(sleepy, tmp_path, "-u", "1", "-t", "2", "--input-shape", "4", "--slo-file", str(plan))
    _refused_before_load(run.output, run.returncode)
    line = next(x for x in run.output.splitlines() if "could not start" in x)
    assert "soak.p99_ms" in line and "--scenario soak" in line, line
    assert "regression.max_p99_increase" in line and "--baseline" in line, line


def test_report_names_our_servers_device_without_a_metrics_url(sleepy: ServerProcess, tmp_path: Path) -> None:
    run = run_locust(sleepy, tmp_path, "-u", "1", "-t", "2", "--input-shape", "4")
    s = run.summary()
    assert s["provenance"]["target"]["device"] == "cpu", s["provenance"]["target"]
    report = (run.results / "report.md").read_text()
    assert "- Server device: cpu; GPU: none (the model runs on CPU" in report, report
    # Without --server-metrics-url: our server said where its metrics are, and the run read them.
    assert s["memory"]["available"] and s["provenance"]["server"]["device"] == "cpu", s["memory"]
