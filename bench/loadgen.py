"""Load-generator benchmarks (issue: the load generator), each measured in one run.

- overhead: requests per CPU-second of one Locust process running our user
  (`locust -f loadgen/`) vs a bare Locust gRPC user (bench/locust_bare), same
  server (identity model), same payload, same user count (goal >= 0.90);
- memory: RSS growth of a Locust master and worker over a 6-minute run after
  a 2-minute warm-up, as a Theil-Sen slope (MiB/h) with the leak detector's
  verdict, and the RSS every 10 s. Goals: neither process suspected of a leak,
  and each one's RSS at the end within 5 % of its RSS when the warm-up ended
  (`rss_ratio_*`: RSS after warm-up / RSS at the end, so growth lowers it).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench._client_cpu import tree_cpu as _tree_cpu
from bench._procs import LOCUST, ROOT, headless_locust, interleaved, median, our_server, spawn_quiet
from server.leak import LeakSettings, detect_leak
from server.netutil import free_port


def _locust_rps(
    locustfile: Path, port: int, users: int, duration: float, extra: list[str]
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.json"
        cmd = headless_locust(
            locustfile, port, users, duration, "--json-file", str(stats.with_suffix("")), *extra
        )
        proc = spawn_quiet(cmd, tmp)
        ps = psutil.Process(proc.pid)
        time.sleep(3.0)  # start-up and spawning excluded from the CPU count
        # The whole tree: our Locust process makes its calls in a child (loadtest.engine).
        c0, t0 = _tree_cpu(ps), time.monotonic()
        time.sleep(max(duration - 5.0, 1.0))
        c1, t1 = _tree_cpu(ps), time.monotonic()
        proc.wait(120)
        entries = json.loads(stats.read_text())
    requests = sum(e["num_requests"] for e in entries if e["name"] != "warmup")
    cpu_s = c1 - c0
    rps = requests / duration
    # requests in the measured window, approximated by the run's average rate
    return {
        "rps": rps,
        "cpu_utilization": cpu_s / (t1 - t0),
        "requests_per_cpu_s": rps / max(cpu_s / (t1 - t0), 1e-9),
    }


def generator_overhead(duration: float = 15.0, rounds: int = 3, users: int = 16) -> dict[str, Any]:
    samples: dict[str, list[dict[str, float]]] = {"bare": [], "ours": []}
    with our_server("--model", "identity", "--max-queue-delay-us", "0") as srv:

        def run(name: str, locustfile: Path, extra: list[str]) -> float:
            result = _locust_rps(locustfile, srv["grpc"], users, duration, extra)
            samples[name].append(result)
            return result["requests_per_cpu_s"]

        per_cpu = interleaved(
            {
                "bare": lambda: run("bare", ROOT / "bench" / "locust_bare" / "locustfile.py", []),
                "ours": lambda: run(
                    "ours", ROOT / "loadgen", ["--warmup-requests", "0", "--input-shape", "256"]
                ),
            },
            rounds,
        )
    med = {k: median(v) for k, v in per_cpu.items()}
    return {
        "setup": {
            "users": users,
            "duration_s": duration,
            "rounds": rounds,
            "model": "identity",
            "shape": "1x256",
        },
        "requests_per_cpu_second": per_cpu,
        "median_requests_per_cpu_second": med,
        "median_rps": {k: median([s["rps"] for s in v]) for k, v in samples.items()},
        "median_cpu_utilization": {k: median([s["cpu_utilization"] for s in v]) for k, v in samples.items()},
        "ratio_generator_efficiency": med["ours"] / med["bare"],
        "goals": {"ratio_generator_efficiency": 0.90},
    }


def generator_memory(duration: float = 360.0, users: int = 8, interval: float = 2.0) -> dict[str, Any]:
    """RSS of a master and a worker sampled through a distributed run. The
    first two minutes are warm-up: a master's heap grows for about that long
    (allocator arenas reaching their working size) and then stays flat."""
    with our_server("--model", "identity") as srv, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        master = spawn_quiet(
            headless_locust(
                ROOT / "loadgen", srv["grpc"], users, duration, "--master", "--master-bind-port", str(port),
                "--expect-workers", "1", "--results-dir", tmp, "--input-shape", "256",
            ),
            tmp,
        )  # fmt: skip
        worker = spawn_quiet(
            [LOCUST, "-f", str(ROOT / "loadgen"), "--worker", "--master-port", str(port)], tmp
        )
        series: dict[str, list[tuple[float, float]]] = {"master": [], "worker": []}
        start = time.monotonic()
        while master.poll() is None:
            for name, proc in (("master", master), ("worker", worker)):
                if proc.poll() is not None:
                    continue
                with contextlib.suppress(psutil.Error):
                    series[name].append(
                        (time.monotonic() - start, float(psutil.Process(proc.pid).memory_info().rss))
                    )
            time.sleep(interval)
        worker.wait(60)
    warmup = min(120.0, duration / 3)
    out: dict[str, Any] = {"setup": {"duration_s": duration, "users": users, "interval_s": interval}}
    goals: dict[str, float] = {"leak_free": 1.0}
    suspected = False
    for name, pts in series.items():
        t = np.array([p[0] for p in pts])
        v = np.array([p[1] for p in pts])
        verdict = detect_leak(t, v, name, LeakSettings(warmup_s=warmup, min_samples=10))
        suspected = suspected or verdict.suspected
        after = v[t >= warmup]
        out[f"rss_ratio_{name}"] = float(after[0] / after[-1]) if len(after) else 0.0
        goals[f"rss_ratio_{name}"] = 0.95
        out[name] = {
            "rss_start_mib": float(v[0] / 2**20) if len(v) else None,
            "rss_end_mib": float(v[-1] / 2**20) if len(v) else None,
            "growth_mib_per_hour": verdict.slope_bytes_per_hour / 2**20 if verdict.samples else None,
            "leak_suspected": verdict.suspected,
            "verdict": verdict.reason,
            "rss_mib_every_10s": [
                [round(float(t_), 1), round(float(v_) / 2**20, 2)]
                for t_, v_ in pts[:: max(1, int(10 / interval))]
            ],
        }
    out["leak_free"] = 0.0 if suspected else 1.0
    out["goals"] = goals
    return out
