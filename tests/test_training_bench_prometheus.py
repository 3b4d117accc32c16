"""The training dashboard and alert rules against a real Prometheus.

A real training process (`python -m training.bench_cli bench --metrics-port 0`)
trains digits-cnn while one Prometheus (Debian's package) scrapes it every
second, together with a real Pushgateway holding the summary a finished bench
run pushed. Prometheus loads a copy of the training rules with short `for:`
(the expressions are the real ones). Every expression of the training dashboard
must return data, except the GPU panels, which must return none on a host
without a GPU; every rule expression evaluates, and the pushed run that did not
pass fires its alert.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from exporters import grafana
from exporters.prometheus_api import PrometheusAPI, has_data
from exporters.stack import Job, prometheus_config, start_prometheus, start_pushgateway, write_config
from tests.server_support import eventually

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "exporters" / "rules" / "modelsoak-training-alerts.yml"
LIVE, PUSHED = "live-train", "pushed-train"
GPU_ONLY = ("modelsoak_training_gpu_utilization_ratio", "modelsoak_training_gpu_power_watts")
DEADLINE_S = 90.0  # generous: the machine may be busy with other tests


@dataclass
class Stack:
    prom: PrometheusAPI
    instance: str
    rules_copy: Path


def _eventually(check: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    return eventually(check, what, timeout_s)


def _bench(tmp: Path, run_id: str, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "training.bench_cli", "bench", "--model", "digits-cnn", "--device", "cpu",
        "--run-id", run_id, "--out", str(tmp / run_id), *args,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("training-prometheus")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    gateway = start_pushgateway(tmp / "pushgateway", "127.0.0.1:0")
    live = subprocess.Popen(
        _bench(tmp, LIVE, "--epochs", "100000", "--metrics-port", "0"),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    prom = None
    try:
        assert live.stdout is not None
        lines: list[str] = []
        while not (m := re.search(r"http://127\.0\.0\.1:(\d+)/metrics", lines[-1] if lines else "")):
            lines.append(live.stdout.readline())
            assert lines[-1], "".join(lines)  # the process ended before serving its metrics
        instance = f"127.0.0.1:{m.group(1)}"
        pushed = subprocess.run(
            _bench(tmp, PUSHED, "--epochs", "4", "--pushgateway", gateway.url),
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False,
        )  # fmt: skip
        assert pushed.returncode == 4, pushed.stdout + pushed.stderr
        doc = yaml.safe_load(RULES.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                rule["for"] = "3s"
        rules = tmp / "rules.yml"
        rules.write_text(yaml.safe_dump(doc, sort_keys=False))
        jobs = [
            Job("modelsoak-training", [instance]),
            Job("modelsoak-pushgateway", [f"127.0.0.1:{gateway.port}"], honor_labels=True),
        ]
        config = write_config(tmp / "prometheus.yml", prometheus_config(jobs, [rules], 1.0))
        prom = start_prometheus(config, tmp / "data", "127.0.0.1:0")
        api = PrometheusAPI(prom.url)
        api.wait_ready()
        _eventually(
            lambda: has_data(api.query("rate(modelsoak_training_samples_total[10s]) > 0")),
            f"live samples (targets: {[(t['scrapeUrl'], t['health'], t['lastError']) for t in api.targets()]})",
        )
        _eventually(lambda: has_data(api.query("modelsoak_training_run_passed")), "the pushed summary")
        yield Stack(api, instance, rules)
    finally:
        live.terminate()
        live.wait(30)
        if prom is not None:
            prom.stop()
        gateway.stop()


def test_promtool_checks_the_training_rules_and_their_unit_tests(stack: Stack) -> None:
    for path in (RULES, stack.rules_copy):
        out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    unit = RULES.with_name("modelsoak-training-alerts.test.yml")
    out = subprocess.run(
        ["promtool", "test", "rules", unit.name], cwd=unit.parent, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _rules() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


@pytest.mark.parametrize(("alert", "expr"), _rules(), ids=[a for a, _ in _rules()])
def test_rule_expression_evaluates(stack: Stack, alert: str, expr: str) -> None:
    stack.prom.query(expr)  # raises with Prometheus' message on a bad expression

    def evaluated() -> dict[str, Any] | None:
        for group in stack.prom.rules():
            for rule in group["rules"]:
                if rule["name"] == alert and not rule.get("lastEvaluation", "0001").startswith("0001"):
                    return dict(rule)
        return None

    rule = _eventually(evaluated, f"Prometheus evaluating {alert}")
    assert rule["health"] == "ok", rule.get("lastError")


def _firing(stack: Stack, alert: str) -> list[dict[str, Any]]:
    return [a for a in stack.prom.alerts() if a["labels"]["alertname"] == alert and a["state"] == "firing"]


def test_the_pushed_run_that_did_not_pass_fires_and_the_healthy_live_run_does_not(stack: Stack) -> None:
    fired = _eventually(lambda: _firing(stack, "ModelsoakTrainingRunNotPassed"), "the not-passed alert")
    assert [a["labels"]["run_id"] for a in fired] == [PUSHED]
    assert "exit code 4" in fired[0]["annotations"]["description"]
    for alert in (
        "ModelsoakTrainingLossNotFinite",
        "ModelsoakTrainingStalled",
        "ModelsoakTrainingMemoryNearLimit",
    ):
        assert not _firing(stack, alert), alert


def _values(stack: Stack, which: str) -> dict[str, str]:
    builtins = {"__rate_interval": "5s", "__interval": "1s", "__range": "1m", "datasource": "prometheus"}
    if which == "all":
        return {**builtins, "run_id": ".*", "model": ".*", "instance": ".*"}
    return {**builtins, "run_id": f"{LIVE}|{PUSHED}", "model": "digits-cnn", "instance": stack.instance}


DOC = grafana.load("modelsoak-training.json")


@pytest.mark.parametrize(
    "pq", list(grafana.queries(DOC)), ids=[f"{q.panel}/{q.ref}" for q in grafana.queries(DOC)]
)
def test_dashboard_expression(stack: Stack, pq: grafana.PanelQuery) -> None:
    gpu_only = any(name in pq.expr for name in GPU_ONLY)
    for which in ("all", "selected"):
        expr = grafana.substitute(pq.expr, _values(stack, which))

        def run(expr: str = expr) -> dict[str, Any]:
            now = time.time()
            return stack.prom.query(expr) if pq.instant else stack.prom.query_range(expr, now - 30, now, 2)

        run()
        if pq.panel.startswith("annotation"):
            continue  # ALERTS: data only while something fires
        if gpu_only and not torch.cuda.is_available():
            assert not has_data(run()), f"{expr}: values although this host has no GPU"
        else:
            _eventually(lambda run=run: has_data(run()), f"data from {expr} ({which})")  # type: ignore[misc]


def test_dashboard_variables_resolve(stack: Stack) -> None:
    values = _values(stack, "all")
    got = {}
    for var, query in grafana.variable_queries(DOC).items():
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert m, f"${var}: {query}"
        got[var] = stack.prom.label_values(m.group(2), grafana.substitute(m.group(1), values))
    assert {LIVE, PUSHED} <= set(got["run_id"])
    assert got["model"] == ["digits-cnn"]
    assert got["instance"] == [stack.instance]
