"""Exporters, dashboards and alert rules against a real Prometheus.

One Prometheus (Debian's package) per module scrapes, every second, two real
servers under light load (identity, with some bad requests, and leaky, which
keeps memory per request) and a real Pushgateway holding the summary a real
load-generator run pushed at its end;
it loads a copy of our alert rules whose `for:` durations are shortened (the
expressions are the real ones, checked below). Then every dashboard expression
and every rule expression is evaluated through the HTTP API.

Which scrape target each expression needs, and what is asserted about it, is
the explicit table EXPECT below. Two headless load generators (`locust -f
loadgen/ --metrics-port`) are scrape targets too, and a real run pushes its
summary to the Pushgateway at its end.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml

from exporters import grafana
from exporters.prometheus_api import PrometheusAPI, has_data
from exporters.stack import RULES, Job, prometheus_config, start_prometheus, start_pushgateway, write_config
from loadtest.results import Summary
from server.netutil import free_port
from tests.conftest import ServerProcess, infer_request, locust_cmd
from tests.server_support import eventually

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

RUN_ID = "prometheus-test"
SCRAPE_S = 1.0
# `for:` of the rules in the test copy: short, so alerts fire within the module. The
# leak rule keeps 30 s so that a verdict must hold over six of the server's
# 5-s leak evaluations (as the real 10 min asks for many), not flicker once.
TEST_FOR = {"ModelsoakMemoryLeakSuspected": "30s"}
TEST_FOR_DEFAULT = "3s"
DATA, EVALUATES, IF_GPU, IF_CUDA = "returns data", "evaluates", "data iff GPU metrics", "data iff CUDA"
STREAM_DATA = "data from the streaming model"
# Where each metric family comes from (first match wins), and what is asserted.
SOURCES: list[tuple[str, tuple[str, ...]]] = [
    ("training", ("modelsoak_training_",)),
    ("loadgen", ("modelsoak_client_",)),
    ("pushgateway", ("modelsoak_run_",)),
    ("gpu", ("modelsoak_gpu_memory_", "modelsoak_gpu_utilization_", "modelsoak_gpu_power_", "nv_gpu_")),
    ("cuda", ("modelsoak_torch_cuda_",)),
    (
        "stream",
        (
            "modelsoak_time_to_first_token_",
            "modelsoak_inter_token_latency_",
            "modelsoak_generation_",
            "modelsoak_prompt_tokens_",
            "modelsoak_sequences_",
            "modelsoak_batch_occupancy",
            "modelsoak_kv_cache_",
            "modelsoak_e2e_request_latency_",
        ),
    ),
    ("server", ("modelsoak_", "ALERTS", "up")),
]
EXPECT = {
    "server": DATA,
    "pushgateway": DATA,
    # Two headless load generators (same run id) serve their metrics on ports of
    # their own: one sends good requests, the other requests the server refuses
    # (a wrong datatype), so the failure panels have data too.
    "loadgen": DATA,
    # NVML metrics: data when the servers report modelsoak_gpu_metrics_info{status="present"};
    # without a GPU the expressions must come back empty (no invented zeros).
    "gpu": IF_GPU,
    # torch CUDA memory: empty on CPU servers; on CUDA only once torch initialised CUDA.
    "cuda": IF_CUDA,
    # No training process here: tests/test_training_bench_prometheus.py checks that the
    # training dashboard's expressions return data against a real training run.
    "training": EVALUATES,
    # Token-streaming metrics: a tiny-lm server streams all along (`_stream_load`); with the
    # dashboard's model variable set to identity (a tensor model) they evaluate to nothing.
    "stream": STREAM_DATA,
}
DEADLINE_S = 60.0  # how long an expression may take to return data after the stack is up
_METRIC = re.compile(r"\b(modelsoak_\w+|nv_gpu_\w+|ALERTS|up)\b")


def source_of(expr: str) -> str:
    names = _METRIC.findall(expr)
    found = {next(src for src, prefixes in SOURCES if n.startswith(prefixes)) for n in names}
    assert found, f"no known metric in {expr!r}"
    assert len(found - {"server"}) <= 1, f"{expr!r} mixes sources {found}: split it into targets"
    return next(src for src, _ in SOURCES if src in found)


@dataclass
class Stack:
    prom: PrometheusAPI
    identity: ServerProcess
    leaky: ServerProcess
    gateway_url: str
    rules_copy: Path
    down_target: str
    loadgen_ports: list[int]
    pushed: Summary  # the summary a real run pushed as the module started
    pushed_to: ServerProcess  # the server the pushing runs load (not a leak-alert target)

    def instance(self, srv: ServerProcess) -> str:
        return f"127.0.0.1:{srv.metrics_port}"


def _eventually(check: Callable[[], Any], timeout_s: float = DEADLINE_S, what: str = "") -> Any:
    return eventually(check, what, timeout_s)


def _load(stop: threading.Event, identity: ServerProcess, leaky: ServerProcess) -> None:
    """Light steady load; every 10th identity request is malformed (INVALID_ARGUMENT)."""
    good = infer_request("identity", {"INPUT0": np.ones((1, 16), np.float32)})
    bad = infer_request("identity", {"INPUT0": np.ones((1, 16), np.int32)})
    leak = infer_request("leaky", {"INPUT0": np.ones((1, 16), np.float32)})
    stubs = identity.stub(), leaky.stub()
    i = 0
    while not stop.wait(0.02):
        i += 1
        with contextlib.suppress(grpc.RpcError):  # the malformed request fails, as intended
            stubs[0].ModelInfer(bad if i % 10 == 0 else good, timeout=10)
        if i % 2 == 0:
            stubs[1].ModelInfer(leak, timeout=10)


def _stream_load(stop: threading.Event, lm: ServerProcess) -> None:
    """Short completions streamed from tiny-lm over its OpenAI-compatible API, one after another."""
    body = json.dumps({"model": "tiny-lm", "prompt": "hello", "max_tokens": 6, "stream": True}).encode()
    while not stop.wait(0.1):
        conn = http.client.HTTPConnection("127.0.0.1", lm.metrics_port, timeout=30)
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
            conn.getresponse().read()
        conn.close()


def _start_loadgen(
    tmp: Path, server: ServerProcess, name: str, *args: str
) -> tuple[subprocess.Popen[bytes], int]:
    """A headless `locust -f loadgen/` with its Prometheus metrics on a port of its own."""
    port = free_port()
    workdir = tmp / name
    workdir.mkdir()
    cmd = [
        *locust_cmd(
            server,
            workdir,
            "-u",
            "2",
            "-r",
            "2",
            "-t",
            "600",
            "--input-shape",
            "16",
            "--metrics-port",
            str(port),
            "--warmup-requests",
            "0",
            *args,
        )
    ]
    cmd[cmd.index("--run-id") + 1] = RUN_ID
    log = open(workdir / "locust.log", "wb")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT), port


def _pushing_run(
    tmp: Path, server: ServerProcess, gateway: str, run_id: str, plan: str
) -> subprocess.Popen[bytes]:
    """A real headless `locust -f loadgen/` soak run that pushes its summary at
    its end: short, with the server's memory sampled often enough for a leak
    slope, so every modelsoak_run_* series a dashboard reads is pushed."""
    workdir = tmp / run_id
    workdir.mkdir()
    (workdir / "plan.yaml").write_text(plan)
    cmd = locust_cmd(
        server, workdir, "--scenario", "soak", "--slo-file", str(workdir / "plan.yaml"),
        "--input-shape", "16", "--series-interval", "0.2", "--pushgateway", gateway,
        "--server-metrics-url", f"http://127.0.0.1:{server.metrics_port}",
    )  # fmt: skip
    cmd[cmd.index("--run-id") + 1] = run_id
    log = open(workdir / "locust.log", "wb")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)


def _pushed(proc: subprocess.Popen[bytes], tmp: Path, run_id: str) -> Summary:
    proc.wait(120)
    path = tmp / run_id / run_id / "summary.json"
    assert path.exists(), (tmp / run_id / "locust.log").read_text()[-3000:]
    return Summary.read(path)


PASSING_SOAK = "soak: {users: 1, duration_s: 8, leak_warmup_s: 1}\n"
# p99 under a microsecond: no server meets it, so the run fails and pushes 0.
FAILING_SOAK = "soak: {users: 1, duration_s: 4, leak_warmup_s: 1, p99_ms: 0.001}\n"


def _test_rules(dest: Path) -> Path:
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["for"] = TEST_FOR.get(rule["alert"], TEST_FOR_DEFAULT)
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def stack(
    start_module_server: Callable[..., ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("prometheus")
    fast = ("--memory-interval-s", "0.2", "--leak-warmup-s", "20")
    identity = start_module_server("--model", "identity", *fast)
    leaky = start_module_server("--model", "leaky", "--param", "leak_bytes=131072", *fast)
    # The runs that push summaries load a server of their own: a soak started now
    # may still be opening connections on `identity` after its leak warm-up, and
    # that step in its RSS is not what the leak alert test is about.
    pushed_to = start_module_server("--model", "identity", *fast)
    lm = start_module_server(
        "--model", "tiny-lm", "--param", "layers=1", "--param", "dim=64", "--param", "threads=1"
    )
    stop = threading.Event()
    loader = threading.Thread(target=_load, args=(stop, identity, leaky), daemon=True)
    loader.start()
    streamer = threading.Thread(target=_stream_load, args=(stop, lm), daemon=True)
    streamer.start()
    gateway = start_pushgateway(tmp / "pushgateway", "127.0.0.1:0")
    # Bound but not listening: connections are refused, and no one else can take the port.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    down = f"127.0.0.1:{hole.getsockname()[1]}"
    prom = None
    loadgens = [
        _start_loadgen(tmp, identity, "good"),
        _start_loadgen(tmp, identity, "bad", "--datatype", "INT32"),
    ]
    pusher = _pushing_run(tmp, pushed_to, gateway.url, RUN_ID, PASSING_SOAK)
    try:
        jobs = [
            Job("modelsoak-server", [f"127.0.0.1:{s.metrics_port}" for s in (identity, leaky, lm)]),
            Job("modelsoak-pushgateway", [f"127.0.0.1:{gateway.port}"], honor_labels=True),
            Job("modelsoak-absent", [down]),
            Job("modelsoak-loadgen", [f"127.0.0.1:{port}" for _, port in loadgens]),
        ]
        rules = _test_rules(tmp / "rules.yml")
        config = write_config(tmp / "prometheus.yml", prometheus_config(jobs, [rules], SCRAPE_S))
        prom = start_prometheus(config, tmp / "data", "127.0.0.1:0")
        api = PrometheusAPI(prom.url)
        api.wait_ready()
        pushed = _pushed(pusher, tmp, RUN_ID)
        # the leak slope too: every modelsoak_run_* series a dashboard reads was pushed
        assert pushed.memory.leak is not None and pushed.memory.leak.slope_bytes_per_s is not None
        st = Stack(
            api, identity, leaky, gateway.url, rules, down, [port for _, port in loadgens], pushed, pushed_to
        )
        rates = 'sum by (instance) (rate(modelsoak_requests_total{model=~"identity|leaky"}[5s]))'
        _eventually(lambda: len(api.query(rates)["result"]) == 2, what="request rates of both servers")
        _eventually(lambda: has_data(api.query("modelsoak_run_passed")), what="the pushed summary")
        _eventually(
            lambda: has_data(api.query("modelsoak_client_requests_total")), what="load-generator metrics"
        )
        yield st
    finally:
        for proc in [pusher, *(p for p, _ in loadgens)]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        stop.set()
        loader.join(15)
        streamer.join(35)
        if prom is not None:
            prom.stop()
        gateway.stop()
        hole.close()


# ------------------------------------------------------------------ rules and metrics


def test_promtool_checks_rules_and_their_unit_tests(stack: Stack) -> None:
    for path in (RULES, stack.rules_copy):
        out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    unit = RULES.with_name("modelsoak-alerts.test.yml")
    out = subprocess.run(
        ["promtool", "test", "rules", unit.name], cwd=unit.parent, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_make_stack_runs_and_stops(tmp_path: Path) -> None:
    """`python -m exporters.stack` on free ports: config valid, rules loaded, clean stop on SIGTERM."""
    cmd = [
        sys.executable,
        "-m",
        "exporters.stack",
        "--prometheus-port",
        "0",
        "--pushgateway-port",
        "0",
        "--scrape-interval-s",
        "1",
        "--dir",
        str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        urls = dict(re.findall(r"^\s+(Prometheus|Pushgateway)\s+(http://\S+)", "".join(lines), re.M))
        assert set(urls) == {"Prometheus", "Pushgateway"}, lines
        prom = PrometheusAPI(urls["Prometheus"])
        prom.wait_ready()
        assert {g["name"] for g in prom.rules()} == {
            "modelsoak-server",
            "modelsoak-loadgen",
            "modelsoak-targets",
            "modelsoak-training",
        }
        check = subprocess.run(
            ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert (tmp_path / "grafana-provisioning" / "datasources" / "modelsoak.yml").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stack stopped" in out
    assert not PrometheusAPI(urls["Prometheus"], timeout_s=2).ready()


def test_metrics_pass_promtool_lint(stack: Stack) -> None:
    """Both endpoints: the servers' and the load generators' (Locust master)."""
    urls = [f"{srv.metrics_url}/metrics" for srv in (stack.identity, stack.leaky)]
    urls += [f"http://127.0.0.1:{port}/metrics" for port in stack.loadgen_ports]
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read()
        assert b"modelsoak_requests_total" in text or b"modelsoak_client_requests_total" in text
        out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
        assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
            out.stdout.decode() + out.stderr.decode()
        )


def test_targets_are_scraped(stack: Stack) -> None:
    health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in stack.prom.targets()}
    for srv in (stack.identity, stack.leaky):
        assert health[("modelsoak-server", stack.instance(srv))] == "up"
    assert health[("modelsoak-absent", stack.down_target)] == "down"
    assert [h for (job, _), h in health.items() if job == "modelsoak-pushgateway"] == ["up"]


def _rules() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def _evaluated(stack: Stack, alert: str) -> dict[str, Any] | None:
    for group in stack.prom.rules():
        for rule in group["rules"]:
            if rule["name"] == alert and not rule.get("lastEvaluation", "0001").startswith("0001"):
                return dict(rule)
    return None


@pytest.mark.parametrize(("alert", "expr"), _rules(), ids=[a for a, _ in _rules()])
def test_rule_expression_evaluates(stack: Stack, alert: str, expr: str) -> None:
    stack.prom.query(expr)  # raises PrometheusError with Prometheus' message on a bad expression
    copy = {r["alert"]: r for g in yaml.safe_load(stack.rules_copy.read_text())["groups"] for r in g["rules"]}
    assert copy[alert]["expr"] == expr, "the test copy must keep the real expression"
    rule = _eventually(lambda: _evaluated(stack, alert), what=f"Prometheus evaluating {alert}")
    assert rule["health"] == "ok", rule.get("lastError")


def _firing(stack: Stack, alert: str) -> list[dict[str, Any]]:
    return [a for a in stack.prom.alerts() if a["labels"]["alertname"] == alert and a["state"] == "firing"]


def test_leak_alert_fires_for_leaky_not_identity(stack: Stack) -> None:
    leaky, identity = stack.instance(stack.leaky), stack.instance(stack.identity)
    fired = _eventually(
        lambda: [
            a for a in _firing(stack, "ModelsoakMemoryLeakSuspected") if a["labels"]["instance"] == leaky
        ],
        timeout_s=90,
        what="the leak alert for the leaky server",
    )
    assert fired[0]["labels"]["source"] == "rss_bytes"
    assert float(fired[0]["value"]) > 0
    assert "B/s" in fired[0]["annotations"]["description"]
    firing = _firing(stack, "ModelsoakMemoryLeakSuspected")
    # On failure, the identity server's own detector output says what it saw (slope, samples, halves).
    seen = stack.prom.query(f'{{__name__=~"modelsoak_memory_leak_.*", instance="{identity}"}}')["result"]
    assert [a["labels"]["instance"] for a in firing] == [leaky], (firing, seen)
    # The identity server is judged too (its verdict is exported), just not as leaking.
    verdict = stack.prom.query(f'modelsoak_memory_leak_samples{{instance="{identity}"}}')["result"]
    assert verdict and float(verdict[0]["value"][1]) >= 20, verdict


def test_error_ratio_and_target_down_alerts_fire(stack: Stack) -> None:
    errors = _eventually(lambda: _firing(stack, "ModelsoakServerErrorRatioHigh"), what="error ratio alert")
    assert {a["labels"]["instance"] for a in errors} == {stack.instance(stack.identity)}
    down = _eventually(lambda: _firing(stack, "ModelsoakTargetDown"), what="target down alert")
    assert {a["labels"]["job"] for a in down} == {"modelsoak-absent"}
    assert not _firing(stack, "ModelsoakServerDown")


def test_pushed_summary_reaches_prometheus(stack: Stack, tmp_path: Path) -> None:
    """The module's passing run came through; a failing run pushes 0 and its broken SLO."""
    first = stack.prom.query(f'modelsoak_run_latency_seconds{{run_id="{RUN_ID}", quantile="0.99"}}')["result"]
    assert stack.pushed.totals.latency_ms is not None
    assert float(first[0]["value"][1]) == pytest.approx(stack.pushed.totals.latency_ms.p99 / 1000)
    failed = _pushed(_pushing_run(tmp_path, stack.pushed_to, stack.gateway_url, "failed-run", FAILING_SOAK),
                     tmp_path, "failed-run")  # fmt: skip
    assert failed.exit_code != 0 and not next(c for c in failed.slo if c.name == "soak p99").passed
    result = _eventually(
        lambda: stack.prom.query('modelsoak_run_passed{run_id="failed-run"}')["result"],
        what="the failing run's push",
    )
    assert result[0]["metric"]["job"] == "modelsoak", "honor_labels keeps the pushed job label"
    assert result[0]["value"][1] == "0"
    slo = stack.prom.query('modelsoak_run_slo_passed{run_id="failed-run"}')["result"]
    assert {r["metric"]["slo"]: r["value"][1] for r in slo} == {
        c.name: str(int(c.passed)) for c in failed.slo
    }
    assert "0" in {r["value"][1] for r in slo}
    code = stack.prom.query('modelsoak_run_exit_code{run_id="failed-run"}')["result"]
    assert code[0]["value"][1] == str(failed.exit_code)


# ------------------------------------------------------------------ dashboards


def _panel_queries() -> list[grafana.PanelQuery]:
    return [
        q
        for name in sorted(grafana.DASHBOARD_DIR.glob("*.json"))
        for q in grafana.queries(grafana.load(name.name))
    ]


def _values(stack: Stack, which: str) -> dict[str, str]:
    builtins = {"__rate_interval": "5s", "__interval": "1s", "__range": "1m", "datasource": "prometheus"}
    if which == "all":  # Grafana's "All" with allValue ".*"
        return {**builtins, "model": ".*", "instance": ".*", "run_id": ".*"}
    return {**builtins, "model": "identity", "instance": stack.instance(stack.identity), "run_id": RUN_ID}


def _absent_here(stack: Stack, source: str) -> bool:
    """For GPU and CUDA expressions: whether the servers say that data cannot exist here."""
    if source == "gpu":
        info = stack.prom.query("modelsoak_gpu_metrics_info")["result"]
        assert info and all(i["metric"]["status"] == "present" or i["metric"]["reason"] for i in info), info
        return all(i["metric"]["status"] == "absent" for i in info)
    devices = {i["metric"]["device"] for i in stack.prom.query("modelsoak_server_info")["result"]}
    return devices == {"cpu"}


def _returns_data(run: Callable[[], dict[str, Any]]) -> bool:
    return has_data(run())


def _ids() -> list[str]:
    return [
        f"{q.dashboard}/{q.panel}/{q.ref}[{source_of(q.expr)}: {EXPECT[source_of(q.expr)]}]"
        for q in _panel_queries()
    ]


@pytest.mark.parametrize("pq", _panel_queries(), ids=_ids())
def test_dashboard_expression(stack: Stack, pq: grafana.PanelQuery) -> None:
    source = source_of(pq.expr)
    expect = EXPECT[source]
    for which in ("all", "identity"):
        expr = grafana.substitute(pq.expr, _values(stack, which))

        def run(expr: str = expr) -> dict[str, Any]:
            now = time.time()
            return stack.prom.query(expr) if pq.instant else stack.prom.query_range(expr, now - 30, now, 2)

        run()  # evaluates without error, or raises with Prometheus' message
        if expect == STREAM_DATA and which == "identity":
            continue  # identity streams no tokens: the expression evaluated, and that is all it can do
        if expect in (DATA, STREAM_DATA) or (expect == IF_GPU and not _absent_here(stack, source)):
            _eventually(partial(_returns_data, run), what=f"data from {expr} ({which})")
        elif expect in (IF_GPU, IF_CUDA) and _absent_here(stack, source):
            assert not has_data(run()), f"{expr} returns values although the servers report none"
        # EVALUATES, and IF_CUDA on a CUDA server (torch's CUDA counters exist only
        # once torch has initialised CUDA, which an ONNX Runtime model never does).


@pytest.mark.parametrize("name", ["modelsoak-live.json", "modelsoak-soak.json"])
def test_dashboard_variables_resolve(stack: Stack, name: str) -> None:
    values = _values(stack, "all")
    for var, query in grafana.variable_queries(grafana.load(name)).items():
        m = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", query)
        assert m, f"${var}: {query}"
        match = grafana.substitute(m.group(1), values) if m.group(1) else None
        got = stack.prom.label_values(m.group(2), match)
        if var == "model":
            assert {"identity", "leaky"} <= set(got)
        elif var == "instance":
            assert {stack.instance(stack.identity), stack.instance(stack.leaky)} <= set(got)
        elif "modelsoak_client_" not in query or EXPECT["loadgen"] == DATA:
            assert RUN_ID in got, f"${var}: {query} -> {got}"


def test_a_run_pushes_its_summary_at_the_end(stack: Stack, tmp_path: Path) -> None:
    """A real `locust -f loadgen/` run with --pushgateway: its verdict, percentiles
    and throughput come back through Prometheus."""
    cmd = locust_cmd(
        stack.identity,
        tmp_path,
        "-u",
        "1",
        "-t",
        "3",
        "--input-shape",
        "16",
        "--pushgateway",
        stack.gateway_url,
    )
    cmd[cmd.index("--run-id") + 1] = "pushed-by-a-run"
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    summary = Summary.read(tmp_path / "pushed-by-a-run" / "summary.json")
    result = _eventually(
        lambda: stack.prom.query('modelsoak_run_passed{run_id="pushed-by-a-run"}')["result"],
        what="the run's push",
    )
    assert result[0]["value"][1] == "1"
    p99 = stack.prom.query('modelsoak_run_latency_seconds{run_id="pushed-by-a-run", quantile="0.99"}')[
        "result"
    ]
    assert summary.totals.latency_ms is not None
    assert float(p99[0]["value"][1]) == pytest.approx(summary.totals.latency_ms.p99 / 1000)
    tput = stack.prom.query('modelsoak_run_throughput_samples_per_second{run_id="pushed-by-a-run"}')["result"]
    assert float(tput[0]["value"][1]) == pytest.approx(summary.totals.samples_per_s)
