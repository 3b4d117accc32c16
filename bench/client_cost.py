"""The load generator's client cost against Triton's perf_analyzer, in one run.

Same server, same model, same number of requests in flight, each client in
turn (interleaved rounds): perf_analyzer (`--concurrency-range N`, sync gRPC
calls), `locust -f loadgen/` with the request engine making its calls in C
(--client-engine native, what auto picks where it builds: loadtest.native_client),
the same engine on grpc.aio (--client-engine process), and each user's own call
in the Locust process (--client-engine gevent, the path before the engine).

For each: throughput, and client CPU-seconds per 1,000 requests (user + system
of the client's whole process tree -- Locust and its engine child -- over a
window that leaves out start-up and the end). The goals, as ratios:

- throughput at 4 in flight against `mlp`: ours / perf_analyzer >= 0.90;
- client CPU per request against `mlp`: perf_analyzer / ours >= 0.5 (ours at
  most twice perf_analyzer's);
- what one Locust process can send against `identity` (16 users): engine /
  gevent >= 1.3, as requests per client CPU-second (the server, one Python
  process, holds every client at the same requests/s on these two cores, so the
  rate a process that is itself the limit would reach is 1 / its CPU per
  request; the requests/s ratio is reported beside it);
- against `sleep` (10 ms) at concurrency 1: our p50 within 0.5 ms of
  perf_analyzer's average (`sleep_p50_margin`: 1 - |ours - pa| / 0.5 ms >= 0).

Beside them, the open-loop dispatcher's lag behind its schedule (500 requests/s,
Poisson, 16 users, `mlp`) on the engine's loop and on gevent's, from each run's
summary (`open_loop_lag_ms`: median, p99 and worst).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench._client_cpu import tree_cpu as _tree_cpu
from bench._procs import LOCUST, ROOT, median, our_server

PA = ROOT / ".tools" / "perf_analyzer"


def _cpu_window(proc: subprocess.Popen[bytes], start_s: float, window_s: float) -> float:
    ps = psutil.Process(proc.pid)
    time.sleep(start_s)
    c0 = _tree_cpu(ps)
    time.sleep(window_s)
    return _tree_cpu(ps) - c0


def perf_analyzer(port: int, model: str, concurrency: int, shape: str) -> dict[str, float]:
    cmd = [str(PA / "bin" / "perf_analyzer"), "-m", model, "-u", f"127.0.0.1:{port}", "-i", "grpc",
           "--concurrency-range", str(concurrency), "--measurement-interval", "4000",
           "--stability-percentage", "999", "--max-trials", "3"]  # fmt: skip
    if shape:
        cmd += ["--shape", f"INPUT0:{shape}"]
    env = {**os.environ, "LD_LIBRARY_PATH": str(PA / "lib")}
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        window = 6.0
        cpu = _cpu_window(proc, 3.0, window)
        proc.wait(120)
        out.seek(0)
        text = out.read().decode()
    thr = float(re.findall(r"Throughput: ([\d.]+) infer/sec", text)[-1])
    avg_us = float(re.findall(r"Avg latency: (\d+) usec", text)[-1])
    p50_us = float(re.findall(r"p50 latency: (\d+) usec", text)[-1])
    return {"rps": thr, "cpu_ms_per_request": cpu / (thr * window) * 1e3, "avg_ms": avg_us / 1e3, "p50_ms": p50_us / 1e3}


def _locust_run(port: int, users: int, engine: str, duration: float, extra: list[str]) -> tuple[dict[str, Any], float, float]:
    """A headless run's summary, its client CPU-seconds over a window that leaves
    out start-up and the end, and that window's length."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [LOCUST, "-f", str(ROOT / "loadgen"), "--headless", "--host", f"grpc://127.0.0.1:{port}",
               "-u", str(users), "-r", str(users), "-t", f"{int(duration)}s", "--only-summary",
               "--warmup-requests", "0", "--client-engine", engine, "--results-dir", tmp, *extra]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        window = duration - 6.0
        cpu = _cpu_window(proc, 4.0, window)
        proc.wait(120)
        summary = json.loads(next(Path(tmp).glob("*/summary.json")).read_text())
    return summary, cpu, window


def locust(port: int, users: int, engine: str, shape: str, duration: float = 14.0) -> dict[str, float]:
    summary, cpu, window = _locust_run(port, users, engine, duration, ["--input-shape", shape] if shape else [])
    phase = summary["phases"][0]
    return {
        "rps": float(phase["rps"]),
        "cpu_ms_per_request": cpu / (float(phase["rps"]) * window) * 1e3,
        "p50_ms": float(phase["latency_ms"]["p50"]),
    }


def open_loop(port: int, engine: str, rate: float = 500.0, users: int = 16, duration: float = 12.0) -> dict[str, float]:
    """The open-loop dispatcher's lag behind its schedule (Poisson arrivals), from the run's summary."""
    extra = ["--arrival-rate", str(rate), "--arrival", "poisson"]
    summary, cpu, window = _locust_run(port, users, engine, duration, extra)
    ol = summary["generator"]["openloop"]
    phase = summary["phases"][0]
    return {
        "behind_p50_ms": float(ol["behind_p50_ms"]),
        "behind_p99_ms": float(ol["behind_p99_ms"]),
        "behind_max_ms": float(ol["max_behind_ms"]),
        "late": float(ol["late"]),
        "sustained_rps": float(ol["sustained_rps"]),
        "cpu_ms_per_request": cpu / (float(phase["rps"]) * window) * 1e3,
        "p50_ms": float(phase["latency_ms"]["p50"]),
    }


def _rounds(fns: dict[str, Any], rounds: int) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


def _lag(m: dict[str, float]) -> dict[str, float]:
    return {k: m[k] for k in ("behind_p50_ms", "behind_p99_ms", "behind_max_ms")}


def _med(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: median([s[k] for s in samples]) for k in samples[0]}


def client_cost(rounds: int = 3) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with our_server("--model", "mlp") as srv:
        port = srv["grpc"]
        results["mlp_c4"] = _rounds(
            {
                "perf_analyzer": lambda: perf_analyzer(port, "mlp", 4, ""),
                "native": lambda: locust(port, 4, "native", ""),
                "engine": lambda: locust(port, 4, "process", ""),
                "gevent": lambda: locust(port, 4, "gevent", ""),
            },
            rounds,
        )
        # The open loop's schedule on gevent's loop (before) and on the engine's (after).
        results["mlp_open_500"] = _rounds(
            {
                "native": lambda: open_loop(port, "native"),
                "engine": lambda: open_loop(port, "process"),
                "gevent": lambda: open_loop(port, "gevent"),
            },
            rounds,
        )
    with our_server("--model", "identity", "--max-queue-delay-us", "0") as srv:
        port = srv["grpc"]
        results["identity_u16"] = _rounds(
            {
                "native": lambda: locust(port, 16, "native", "256"),
                "engine": lambda: locust(port, 16, "process", "256"),
                "gevent": lambda: locust(port, 16, "gevent", "256"),
            },
            rounds,
        )
    with our_server("--model", "sleep", "--max-queue-delay-us", "0") as srv:
        port = srv["grpc"]
        results["sleep_c1"] = _rounds(
            {
                "perf_analyzer": lambda: perf_analyzer(port, "sleep", 1, "256"),
                "native": lambda: locust(port, 1, "native", "256"),
            },
            rounds,
        )
    med = {case: {who: _med(s) for who, s in by.items()} for case, by in results.items()}
    mlp, ident, slp = med["mlp_c4"], med["identity_u16"], med["sleep_c1"]
    return {
        "setup": {"rounds": rounds, "mlp": "4 in flight", "identity": "16 users, 1x256", "sleep": "10 ms, 1 in flight"},
        "samples": results,
        "medians": med,
        "cpu_s_per_1000_requests": {who: m["cpu_ms_per_request"] for who, m in mlp.items()},
        "ratio_throughput_vs_perf_analyzer": mlp["native"]["rps"] / mlp["perf_analyzer"]["rps"],
        "ratio_aio_engine_throughput_vs_perf_analyzer": mlp["engine"]["rps"] / mlp["perf_analyzer"]["rps"],
        "ratio_gevent_throughput_vs_perf_analyzer": mlp["gevent"]["rps"] / mlp["perf_analyzer"]["rps"],
        "ratio_cpu_perf_analyzer_vs_ours": mlp["perf_analyzer"]["cpu_ms_per_request"]
        / mlp["native"]["cpu_ms_per_request"],
        "ratio_cpu_gevent_vs_native": mlp["gevent"]["cpu_ms_per_request"] / mlp["native"]["cpu_ms_per_request"],
        "ratio_cpu_gevent_vs_aio_engine": mlp["gevent"]["cpu_ms_per_request"] / mlp["engine"]["cpu_ms_per_request"],
        # What one load-generator process can send: against `identity` the server (one
        # Python process) holds every client at the same rate, so a process's capacity is
        # read as the requests it sends per CPU-second (1 / CPU per request), the rate a
        # process that is itself the limit would reach; the rates are kept beside it.
        "ratio_identity_rps_engine_vs_gevent": ident["native"]["rps"] / ident["gevent"]["rps"],
        "ratio_identity_rps_aio_engine_vs_gevent": ident["engine"]["rps"] / ident["gevent"]["rps"],
        "ratio_identity_requests_per_cpu_s_engine_vs_gevent": ident["gevent"]["cpu_ms_per_request"]
        / ident["native"]["cpu_ms_per_request"],
        "sleep_p50_minus_pa_avg_ms": slp["native"]["p50_ms"] - slp["perf_analyzer"]["avg_ms"],
        "open_loop_lag_ms": {who: _lag(m) for who, m in med["mlp_open_500"].items()},
        "sleep_p50_margin": 1.0 - abs(slp["native"]["p50_ms"] - slp["perf_analyzer"]["avg_ms"]) / 0.5,
        "goals": {
            "ratio_throughput_vs_perf_analyzer": 0.90,
            "ratio_cpu_perf_analyzer_vs_ours": 0.5,
            "ratio_identity_requests_per_cpu_s_engine_vs_gevent": 1.3,
            "sleep_p50_margin": 0.0,
        },
    }
