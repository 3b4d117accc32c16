"""What a worker of ours reports to the master, made by the code a real worker runs.

A `Profile` is one simulated worker's measurements: a real `Recorder` fed a
realistic request stream (log-normal latencies with a slow tail, the server's
phase breakdown, one CPU sample a second) and a real Locust `RequestStats` fed
the same requests. Each report interval it records another interval's requests
and produces the `stats` message a worker's `report_to_master` listeners build:
Locust's own stats (serialize_stats / get_stripped_report / serialize_errors, in
the order Locust registers them), the user counts, and our plugin's packed
recorder state, made by `loadtest.plugin.report_blob`, the function the
plugin itself calls. Many simulated workers share a few profiles (their reports
are computed once per profile and interval), so that a fleet of 500 costs the
machine little more than the master it loads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from locust.stats import RequestStats

from loadtest.recorder import Recorder, Snapshot
from loadtest.results import InputInfo, TargetInfo
from server.stats import PHASES

USER_CLASS = "InferenceUser"  # loadgen/locustfile.py's one User class
# Shares of a request's server time, phase by phase (the total is the request's).
_PHASE_SHARE = {"queue": 0.08, "batch_assembly": 0.04, "h2d": 0.05, "compute": 0.55, "d2h": 0.03}
TARGET = TargetInfo(
    model="mlp",
    version="1",
    platform="onnxruntime_onnx",
    server="modelsoak",
    server_version="0.1.0",
    sha256="0" * 64,
    inputs=[InputInfo("input", "FP32", [64])],
    device="cpu",
)


@dataclass
class Report:
    """One interval's `stats` message parts, as a worker builds them."""

    locust: dict[str, Any]  # stats, stats_total, errors
    snapshot: Snapshot  # cumulative counters, this interval's histogram delta
    requests: int  # the worker's cumulative OK requests after this interval

    def blob(self, acked: int, earlier: list[Report]) -> str:
        """The plugin's blob of a worker whose master has folded its deltas up
        to `acked`: this report's state with every delta not folded yet."""
        deltas = [d for r in earlier for d in r.snapshot.deltas if d.seq > acked]
        return replace(self.snapshot, deltas=deltas).pack()


@dataclass
class Profile:
    """One simulated worker's request stream, report after report."""

    seed: int
    name: str  # the request name: the phase the master broadcasts
    rate: float  # requests per second this worker measures
    interval_s: float
    recorder: Recorder = field(default_factory=Recorder)
    stats: RequestStats = field(default_factory=RequestStats)
    reports: list[Report] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        # Each profile its own server: median 1.5-4 ms, a log-normal spread.
        self.median_ns = float(self.rng.uniform(1.5e6, 4e6))
        self.sigma = float(self.rng.uniform(0.25, 0.5))
        self.cpu_mean = float(self.rng.uniform(30.0, 70.0))
        self.ok = 0

    def report(self, k: int, run_id: str, token: str) -> Report:
        """The k-th report (0-based) of a worker with this profile."""
        while len(self.reports) <= k:
            self._advance(run_id, token)
        return self.reports[k]

    def _latencies(self, n: int) -> np.ndarray:
        lat = self.rng.lognormal(np.log(self.median_ns), self.sigma, n)
        slow = self.rng.random(n) < 0.002  # a slow tail: GC pauses, retransmits
        lat[slow] *= self.rng.uniform(5.0, 40.0, int(slow.sum()))
        return lat.astype(np.int64)

    def _advance(self, run_id: str, token: str) -> None:
        from loadtest.plugin import report_blob

        n = int(self.rng.poisson(self.rate * self.interval_s))
        lat = self._latencies(n)
        for ns in lat.tolist():
            server = {p: int(ns * s) for p, s in _PHASE_SHARE.items()}
            server["total"] = int(ns * 0.75)
            server["batch_size"] = 4
            assert set(server) - {"batch_size"} == set(PHASES)
            self.recorder.record(self.name, ns, "OK", 1, 256, server)
            self.stats.log_request("grpc", self.name, ns / 1e6, 256)
        self.ok += n
        for _ in range(round(self.interval_s)):
            self.recorder.add_cpu_sample(float(np.clip(self.rng.normal(self.cpu_mean, 8.0), 0.0, 100.0)))
        locust = {
            "stats": self.stats.serialize_stats(),
            "stats_total": self.stats.total.get_stripped_report(),
            "errors": self.stats.serialize_errors(),
        }
        self.stats.errors = {}
        snap = report_blob(self.recorder, run_id, token, TARGET, "")
        if snap.deltas:  # each report keeps its own delta; a worker's blob gathers those not acknowledged
            self.recorder.acknowledge(snap.deltas[-1].seq)
            snap.deltas = snap.deltas[-1:]
        self.reports.append(Report(locust, snap, self.ok))


def stats_message(report: Report | None, users: int, blob: str) -> dict[str, Any]:
    """The `stats` message's data in the order a worker's listeners fill it:
    Locust's stats, the WorkerRunner's user counts, then our plugin's blob."""
    data: dict[str, Any]
    if report is None:
        empty = RequestStats()
        data = {
            "stats": empty.serialize_stats(),
            "stats_total": empty.total.get_stripped_report(),
            "errors": {},
        }
    else:
        data = dict(report.locust)
    data["user_classes_count"] = {USER_CLASS: users}
    data["user_count"] = users
    data["modelsoak"] = blob
    return data


def heartbeat(state: str, cpu: float, rss: int) -> dict[str, Any]:
    return {"state": state, "current_cpu_usage": cpu, "current_memory_usage": rss}


def now_ms() -> float:
    return time.monotonic() * 1000.0
