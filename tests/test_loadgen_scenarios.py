"""`locust -f loadgen/` headless as a subprocess against our server: every scenario
ends with the right exit code and a complete results folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from loadtest.codec import SchemaError
from loadtest.results import SCHEMA_VERSION, Summary
from tests.conftest import ServerProcess, run_locust

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlp(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_module_server("--model", "mlp", "--memory-interval-s", "0.5")


def _complete(run_dir: Path) -> None:
    for name in ("summary.json", "report.md", "report.html", "timeseries.jsonl"):
        assert (run_dir / name).stat().st_size > 0, name
    html = (run_dir / "report.html").read_text()
    assert "<svg" in html and "Latency percentiles over time" in html


EXPECTED_PHASES = {
    "latency": ["latency"],
    "throughput": ["throughput[bs=1]", "throughput[bs=8]", "throughput[bs=16]", "throughput[bs=32]"],
    "batch": ["batch[bs=32]"],
    "memory": ["memory"],
    "concurrency": ["concurrency"],
    "spike": ["spike:before", "spike:peak", "spike:after"],
    "soak": ["soak"],
    "template": [
        "latency",
        "throughput[bs=1]",
        "throughput[bs=8]",
        "throughput[bs=16]",
        "throughput[bs=32]",
        "batch[bs=32]",
        "memory",
        "concurrency",
    ],
}


@pytest.mark.parametrize("scenario", list(EXPECTED_PHASES))
def test_scenario_passes_with_complete_results(
    mlp: ServerProcess, tmp_path: Path, short_plan: Path, scenario: str
) -> None:
    run = run_locust(
        mlp,
        tmp_path,
        "--scenario",
        scenario,
        "--slo-file",
        str(short_plan),
        "--server-metrics-url",
        mlp.metrics_url,
        "--series-interval",
        "0.5",
    )
    s = run.summary()
    assert run.returncode == 0, run.output[-3000:]
    assert s["verdict"] == "PASS" and s["exit_code"] == 0
    _complete(run.results)
    assert [p["name"] for p in s["phases"]] == EXPECTED_PHASES[scenario]
    assert all(p["requests"] > 0 and p["failures"] == 0 for p in s["phases"])
    assert s["provenance"]["target"]["model"] == "mlp" and s["provenance"]["target"]["sha256"]
    assert s["server_breakdown"]["available"]
    if scenario == "concurrency":
        assert s["phases"][0]["requests"] == 4 * 20
    if scenario in ("memory", "template", "soak"):
        assert s["memory"]["available"] and s["memory"]["peak_bytes"] > 0
    names = {c["name"] for c in s["slo"]}
    wanted = {
        "latency": "latency p99",
        "throughput": "throughput bs=32",
        "batch": "batch 32 latency",
        "memory": "peak memory",
        "concurrency": "concurrency",
        "soak": "memory leak",
        "spike": "spike recovery",
        "template": "peak memory",
    }
    assert wanted[scenario] in names, names


def test_stress_finds_the_highest_load_that_held(
    start_server: Callable[..., ServerProcess], tmp_path: Path, short_plan: Path
) -> None:
    # 25 ms per request, one at a time: p99 passes 100 ms between 2 and 8 users.
    srv = start_server("--model", "sleep", "--param", "sleep_ms=25", "--max-batch-size", "0")
    run = run_locust(
        srv,
        tmp_path,
        "--scenario",
        "stress",
        "--slo-file",
        str(short_plan),
        "--warmup-requests",
        "2",
        "--input-shape",
        "4",
    )
    s = run.summary()
    steps = s["stress"]["steps"]
    assert len(steps) >= 3 and steps[0]["held"], steps
    assert not steps[-1]["held"], "the stress scenario stops at the first step that breaks the SLO"
    assert s["stress"]["highest_held"]["name"] == [x for x in steps if x["held"]][-1]["name"]
    assert s["stress"]["knee"] is not None
    assert run.returncode == 0 and s["verdict"] == "PASS"
    assert "Highest load that held the SLO" in (run.results / "report.md").read_text()


def test_slo_that_cannot_hold_fails_the_run(mlp: ServerProcess, tmp_path: Path) -> None:
    plan = tmp_path / "strict.yaml"
    # However many samples this machine gets in 2 s, the run FAILs: a pass would need
    # the p99's upper bound (662 samples), a failure needs only its lower bound over the limit.
    plan.write_text("latency: {duration_s: 2, p99_ms: 0.001}\n")
    run = run_locust(mlp, tmp_path, "--scenario", "latency", "--slo-file", str(plan))
    s = run.summary()
    assert run.returncode == 3, run.output[-2000:]
    assert s["verdict"] == "FAIL"
    failed = [c for c in s["slo"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["latency p99"]
    p99 = s["phases"][0]["latency_ms"]["ci"]["p99"]
    assert p99["low"] > 0.001 and not any("p99 not enough" in r for r in s["generator"]["invalid_reasons"])
    assert "FAIL" in (run.results / "report.md").read_text()
    assert "modelsoak verdict: FAIL (exit code 3)" in run.output


def test_hdr_percentiles_match_raw_latencies(mlp: ServerProcess, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("latency: {duration_s: 5, users: 2}\n")
    run = run_locust(
        mlp,
        tmp_path,
        "--scenario",
        "latency",
        "--slo-file",
        str(plan),
        "--latency-log",
        str(tmp_path / "raw"),
    )
    s = run.summary()
    raw = np.sort(np.concatenate([np.load(p) for p in (tmp_path / "raw").glob("*.npy")])) / 1e6
    lat = s["phases"][0]["latency_ms"]
    assert len(raw) == s["phases"][0]["requests"] > 500
    for q in (50, 90, 99):
        # Rank conventions differ by one sample (HDR rounds q*n to the nearest
        # rank, inverted_cdf takes the ceiling), and in a sparse tail neighbouring
        # samples can be several per cent apart: what is checked is the HDR
        # histogram's resolution (1 %) against the raw samples at those ranks.
        k = int(np.ceil(q / 100 * len(raw))) - 1
        near = raw[max(k - 1, 0) : k + 2]
        assert near.min() * 0.99 <= lat[f"p{q}"] <= near.max() * 1.01, (q, lat[f"p{q}"], near)
    assert abs(lat["max"] - raw[-1]) <= 0.01 * raw[-1]


def test_baseline_regression(mlp: ServerProcess, tmp_path: Path) -> None:
    # Enough samples in each run to bound the p99 the regression compares (662 at
    # 99 %, loadtest.stats): four users for 4 s.
    plan = tmp_path / "plan.yaml"
    plan.write_text("latency: {duration_s: 4, users: 4}\n")
    for sub in "abc":
        (tmp_path / sub).mkdir()
    first = run_locust(mlp, tmp_path / "a", "--scenario", "latency", "--slo-file", str(plan))
    assert first.returncode == 0, first.output[-2000:]
    baseline = first.results / "summary.json"
    ok_plan = tmp_path / "lenient.yaml"
    ok_plan.write_text(
        "latency: {duration_s: 4, users: 4}\nregression: {max_p99_increase: 10.0, max_throughput_decrease: 0.99}\n"
    )
    second = run_locust(
        mlp, tmp_path / "b", "--scenario", "latency", "--slo-file", str(ok_plan), "--baseline", str(baseline)
    )
    s = second.summary()
    assert second.returncode == 0 and s["baseline"]["path"] == str(baseline)
    assert {c["name"] for c in s["baseline"]["checks"]} == {"regression p99", "regression throughput"}
    strict = tmp_path / "strict.yaml"
    strict.write_text("latency: {duration_s: 4, users: 4}\nregression: {max_p99_increase: -0.99}\n")
    third = run_locust(
        mlp, tmp_path / "c", "--scenario", "latency", "--slo-file", str(strict), "--baseline", str(baseline)
    )
    assert third.returncode == 3
    assert "Against the baseline" in (third.results / "report.md").read_text()


def test_summary_reads_back_through_its_types(mlp: ServerProcess, tmp_path: Path) -> None:
    """summary.json is written from the result types and read back through them
    (--baseline reads it so): the same document, and a summary of another
    schema version is refused before the run starts."""
    plan = tmp_path / "plan.yaml"
    plan.write_text("latency: {duration_s: 2, p99_ms: null, p50_ms: 100}\n")  # 2 s bound a median
    (tmp_path / "a").mkdir()
    first = run_locust(mlp, tmp_path / "a", "--scenario", "latency", "--slo-file", str(plan))
    assert first.returncode == 0, first.output[-2000:]
    path = first.results / "summary.json"
    summary = Summary.read(path)
    assert summary.schema_version == SCHEMA_VERSION and summary.totals.requests > 0
    assert summary.to_json() == path.read_text()
    assert summary.totals.latency_ms is not None and summary.totals.latency_ms.p99_9 > 0
    doc = json.loads(path.read_text())
    for name, change in (
        ("old", {"schema_version": None}),
        ("future", {"schema_version": SCHEMA_VERSION + 1}),
    ):
        bad = tmp_path / f"{name}.json"
        edited = {**doc, **change}
        if change["schema_version"] is None:
            del edited["schema_version"]
        bad.write_text(json.dumps(edited))
        (tmp_path / name).mkdir()
        run = run_locust(
            mlp, tmp_path / name, "--scenario", "latency", "--slo-file", str(plan), "--baseline", str(bad)
        )
        assert run.returncode == 2, run.output[-2000:]
        assert f"this modelsoak reads schema_version {SCHEMA_VERSION}" in run.output
    broken = {**doc, "totals": {**doc["totals"], "requests": "many"}}
    with pytest.raises(SchemaError, match=r"summary.totals.requests: expected int"):
        Summary.parse(broken)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--slo-file", "missing.yaml"], "missing.yaml does not exist"),
        (["--input-shape", "3xq"], "--input-shape"),
    ],
)
def test_bad_options_end_with_setup_error(
    mlp: ServerProcess, tmp_path: Path, args: list[str], fragment: str
) -> None:
    run = run_locust(mlp, tmp_path, "-u", "1", "-t", "5", *args)
    assert run.returncode == 2, run.output[-2000:]
    assert fragment in run.output


def test_unreachable_server_is_a_setup_error(tmp_path: Path) -> None:
    run = run_locust(
        None, tmp_path, "-u", "1", "-t", "10", "--request-timeout", "2", host="grpc://127.0.0.1:9"
    )
    assert run.returncode == 2, run.output[-2000:]
    assert "cannot read metadata from the server" in run.output


def test_torchserve_protocol_against_our_server(mlp: ServerProcess, tmp_path: Path) -> None:
    run = run_locust(
        mlp,
        tmp_path,
        "--protocol",
        "torchserve",
        "--model",
        "mlp",
        "--input-shape",
        "256",
        "--batch-size",
        "4",
        "-u",
        "2",
        "-t",
        "4",
    )
    s = run.summary()
    assert run.returncode == 0, run.output[-2000:]
    assert s["totals"]["requests"] > 0 and s["totals"]["failures"] == 0
    assert s["server_breakdown"]["available"]
    assert s["totals"]["samples_per_s"] == pytest.approx(4 * s["totals"]["rps"], rel=0.01)


def test_options_from_locust_conf_and_environment(mlp: ServerProcess, tmp_path: Path) -> None:
    """Our options read LOCUST_<NAME> variables and locust.conf, as Locust's own do."""
    import os
    import subprocess

    from tests.conftest import LOCUST, ROOT

    plan = tmp_path / "plan.yaml"
    # A median bound by any machine's 3 s (a p99 needs 662 samples, which a loaded runner may not reach).
    plan.write_text("latency: {duration_s: 3, p99_ms: null, p50_ms: 1000}\n")
    (tmp_path / "locust.conf").write_text(
        f"locustfile = {ROOT / 'loadgen'}\nheadless = true\nhost = grpc://{mlp.address}\nscenario = latency\n"
        f"run-id = fromconf\nonly-summary = true\n"
    )
    env = {**os.environ, "LOCUST_SLO_FILE": str(plan), "LOCUST_RESULTS_DIR": str(tmp_path / "out")}
    proc = subprocess.run(
        [LOCUST], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    import json

    summary = json.loads((tmp_path / "out" / "fromconf" / "summary.json").read_text())
    assert summary["scenario"] == "latency"
    assert summary["provenance"]["options"]["slo_file"] == str(plan)
