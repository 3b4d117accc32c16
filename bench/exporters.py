"""Exporter benchmark (issue: exporters, dashboards, alerts), measured in one run.

- metrics_cost: server throughput with metrics collection on (default server:
  probes, statistics, memory sampler and leak detector, and a scraper reading
  /metrics every second during the load, as Prometheus would) against off
  (`--no-probes --metrics-port -1`), same client and payload, interleaved
  rounds (goal ratio >= 0.97); and how long a scrape of each /metrics takes
  under load (median and p99, ms): the server's, during the "on" rounds, and the
  Locust master's (`--metrics-port`), during a headless run against that server.
"""

from __future__ import annotations

import tempfile
import threading
import time
import urllib.request
from typing import Any

import numpy as np

from bench._procs import ROOT, headless_locust, interleaved, load, median, our_server, spawn_quiet
from server.netutil import free_port


class Scraper:
    """Reads a /metrics URL every `interval_s` on a thread; keeps each scrape's time."""

    def __init__(self, url: str, interval_s: float = 1.0) -> None:
        self.url = url
        self.interval_s = interval_s
        self.times_ms: list[float] = []
        self.bytes = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as resp:
                    self.bytes = len(resp.read())
                self.times_ms.append((time.perf_counter() - t0) * 1000)
            except OSError:
                self.errors += 1
            self._stop.wait(max(0.0, self.interval_s - (time.perf_counter() - t0)))


def _summary(times_ms: list[float]) -> dict[str, float | int]:
    ms = np.asarray(times_ms) if times_ms else np.asarray([np.nan])
    return {
        "median": float(np.median(ms)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(np.max(ms)),
        "count": len(times_ms),
    }


def _loadgen_scrape(grpc_port: int, users: int, duration: float) -> dict[str, Any]:
    """Scrape a headless Locust master's /metrics every second while it drives load."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = headless_locust(
            ROOT / "loadgen", grpc_port, users, duration, "--results-dir", tmp, "--input-shape", "256",
            "--warmup-requests", "0", "--metrics-port", str(port),
        )  # fmt: skip
        proc = spawn_quiet(cmd, tmp)
        url = f"http://127.0.0.1:{port}/metrics"
        end = time.monotonic() + 60
        while time.monotonic() < end and proc.poll() is None:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        with Scraper(url) as scraper:
            proc.wait(duration + 120)
    return {**_summary(scraper.times_ms), "bytes": scraper.bytes}


def metrics_cost(
    duration: float = 10.0, rounds: int = 5, concurrency: int = 16, shape: str = "1x256"
) -> dict[str, Any]:
    common = ("--model", "identity", "--max-queue-delay-us", "0")
    scrapes: list[float] = []
    sizes: list[int] = []
    errors = {"scrape": 0, "on": 0, "off": 0}
    with our_server(*common) as on, our_server(*common, "--no-probes", "--metrics-port", "-1") as off:
        url = f"http://127.0.0.1:{on['metrics']}/metrics"

        def run_on() -> float:
            with Scraper(url) as scraper:
                result = load(on["grpc"], "identity", shape, concurrency, duration)
            scrapes.extend(scraper.times_ms)
            sizes.append(scraper.bytes)
            errors["scrape"] += scraper.errors
            errors["on"] += sum(result["errors"].values())
            return float(result["rps"])

        def run_off() -> float:
            result = load(off["grpc"], "identity", shape, concurrency, duration)
            errors["off"] += sum(result["errors"].values())
            return float(result["rps"])

        rps = interleaved({"metrics_on": run_on, "metrics_off": run_off}, rounds)
        loadgen_scrape = _loadgen_scrape(on["grpc"], concurrency, duration)
    med = {k: median(v) for k, v in rps.items()}
    return {
        "setup": {
            "duration_s": duration,
            "rounds": rounds,
            "concurrency": concurrency,
            "shape": shape,
            "scrape_interval_s": 1.0,
        },
        "rps": rps,
        "median_rps": med,
        "scrape_ms": _summary(scrapes),
        "scrape_bytes": max(sizes, default=0),
        "loadgen_scrape_ms": loadgen_scrape,
        "errors": errors,
        "ratio_metrics_on_off": med["metrics_on"] / med["metrics_off"],
        "goals": {"ratio_metrics_on_off": 0.97},
    }
