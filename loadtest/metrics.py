"""The Locust master's Prometheus metrics (a /metrics route on the web UI, or a
port of its own in headless runs), and the end-of-run push to a Pushgateway."""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil
from prometheus_client import CollectorRegistry, Gauge, generate_latest, push_to_gateway
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from loadtest import fold
from loadtest.recorder import merge_openloop
from loadtest.run import Run, runs
from server.netutil import PortInUse
from server.stats import LATENCY_BUCKETS

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram
    from locust.env import Environment

    from loadtest.results import Summary

log = logging.getLogger("modelsoak.loadgen")


def hdr_buckets(hist: HdrHistogram) -> tuple[list[int], float]:
    """Cumulative counts at each of LATENCY_BUCKETS (seconds) and +Inf, and the
    sum in seconds, from an HDR histogram in µs."""
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    total_s = 0.0
    for item in hist.get_recorded_iterator():
        value_s = item.value_iterated_to / 1e6
        counts[bisect.bisect_left(LATENCY_BUCKETS, value_s)] += item.count_at_value_iterated_to
        total_s += value_s * item.count_at_value_iterated_to
    return list(itertools.accumulate(counts)), total_s


@dataclass
class LiveView:
    """What a scrape shows of a run: per request name the latency buckets and
    statuses, the open-loop counters, and each worker's CPU samples and last one."""

    latency: dict[str, tuple[list[int], float]]
    statuses: dict[str, Counter[str]]
    openloop: Counter[str]
    cpu: dict[str, tuple[int, float]]


def live_view(run: Run) -> LiveView:
    """A master reads its folded running counts and the workers' latest counters,
    building no histogram: a scrape every 15 s of a master of hundreds of workers
    must not hold its event loop (and every worker's report) for a full merge."""
    if run.role != "master":
        merged = run.merged()
        view = LiveView(
            {name: hdr_buckets(ns.latency) for name, ns in merged.names.items()},
            {name: Counter(ns.statuses) for name, ns in merged.names.items()},
            Counter(merged.openloop),
            {w: (c.n, c.last) for w, c in merged.cpu.items()},
        )
        merged.release()
        return view
    snapshots = dict(run.snapshots)
    statuses: dict[str, Counter[str]] = {}
    for snap in snapshots.values():
        for name, d in snap.names.items():
            statuses.setdefault(name, Counter()).update(d.statuses)
    return LiveView(
        {name: fold.buckets(slots, LATENCY_BUCKETS) for name, slots in run.folded.latency.items()},
        statuses,
        merge_openloop(snapshots),
        {w: (snap.cpu.n, snap.cpu.last) for w, snap in snapshots.items()},
    )


class MasterCollector(Collector):
    """The run under way, or the last one (its final numbers) until the next begins."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self._process = psutil.Process()

    def collect(self) -> Iterator[Metric]:
        st = runs(self.environment).latest()
        if st is None or st.options is None:
            return
        run = st.run_id
        view = live_view(st)
        info = GaugeMetricFamily(
            "modelsoak_client_run_info",
            "The run (value 1).",
            labels=["run_id", "scenario", "model", "target"],
        )
        info.add_metric(
            [
                run,
                st.options.scenario,
                st.target.model if st.target else st.options.model,
                st.options.host,
            ],
            1,
        )
        lat = HistogramMetricFamily(
            "modelsoak_client_request_duration_seconds",
            "Client-side latency (merged HDR histograms of all workers).",
            labels=["run_id", "name"],
        )
        reqs = CounterMetricFamily(
            "modelsoak_client_requests",
            "Requests by name and gRPC status.",
            labels=["run_id", "name", "status"],
        )
        for name, (cumulative, total) in sorted(view.latency.items()):
            bounds = [*(repr(b) for b in LATENCY_BUCKETS), "+Inf"]
            lat.add_metric([run, name], list(zip(bounds, map(float, cumulative), strict=True)), total)
        for name, statuses in sorted(view.statuses.items()):
            for status, n in sorted(statuses.items()):
                reqs.add_metric([run, name, status], n)
        yield from (info, lat, reqs)
        runner = st.environment.runner
        assert runner is not None
        rps = GaugeMetricFamily(
            "modelsoak_client_requests_per_second", "Current requests/s.", labels=["run_id"]
        )
        rps.add_metric([run], runner.stats.total.current_rps)
        users = GaugeMetricFamily("modelsoak_client_users", "Running users.", labels=["run_id"])
        users.add_metric([run], runner.user_count)
        yield from (rps, users)
        workers = GaugeMetricFamily(
            "modelsoak_client_workers", "Workers by state.", labels=["run_id", "state"]
        )
        by_state = {"ready": 0, "running": 0, "missing": 0}
        if hasattr(runner, "clients"):
            for client in runner.clients.values():
                key = "running" if client.state in ("running", "spawning") else client.state
                if key in by_state:
                    by_state[key] += 1
        for key, n in by_state.items():
            workers.add_metric([run, key], n)
        yield workers
        sends = CounterMetricFamily(
            "modelsoak_client_openloop_sends", "Open-loop sends by outcome.", labels=["run_id", "outcome"]
        )
        ol = view.openloop
        sends.add_metric([run, "on_time"], max(ol.get("scheduled", 0) - ol.get("late", 0), 0))
        sends.add_metric([run, "late"], ol.get("late", 0))
        sends.add_metric([run, "dropped"], ol.get("dropped", 0))
        yield sends
        cpu = GaugeMetricFamily(
            "modelsoak_client_cpu_ratio",
            "Load-generator CPU use, 0..1 per core.",
            labels=["run_id", "worker"],
        )
        for worker, (n, last) in view.cpu.items():
            if n:
                cpu.add_metric([run, worker], last / 100.0)
        if st.role == "master":
            cpu.add_metric([run, "master"], self._process.cpu_percent(None) / 100.0)
        yield cpu


def registry_for(environment: Environment) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MasterCollector(environment))
    return registry


def attach(environment: Environment, port: int) -> None:
    """A /metrics route on the web UI, and a port of its own when asked for."""
    registry = registry_for(environment)
    web_ui = getattr(environment, "web_ui", None)
    if web_ui is not None:
        from flask import Response

        @web_ui.app.route("/metrics")
        def metrics() -> Any:
            return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")

    if port >= 0:
        from gevent.pywsgi import WSGIServer
        from prometheus_client import make_wsgi_app

        from loadtest.tls import exporter_ssl_args

        ssl_args = exporter_ssl_args(environment.parsed_options)
        server = WSGIServer(("0.0.0.0", port), make_wsgi_app(registry), log=None, **ssl_args)
        try:
            server.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortInUse("0.0.0.0", port, "metrics") from None
        runs(environment).metrics_port = server.server_port
        log.info("Prometheus metrics on port %d%s", server.server_port, " (HTTPS)" if ssl_args else "")


def push_summary(url: str, summary: Summary) -> None:
    registry = CollectorRegistry()
    passed = Gauge("modelsoak_run_passed", "1 when every SLO held and the run was valid.", registry=registry)
    passed.set(1 if summary.verdict == "PASS" else 0)
    Gauge("modelsoak_run_exit_code", "The run's exit code.", registry=registry).set(summary.exit_code)
    slo = Gauge("modelsoak_run_slo_passed", "Each SLO check (1 passed).", ["slo"], registry=registry)
    for c in summary.slo:
        slo.labels(c.name).set(1 if c.passed else 0)
    lat = Gauge(
        "modelsoak_run_latency_seconds", "Client latency over the run.", ["quantile"], registry=registry
    )
    latency = summary.totals.latency_ms
    if latency is not None:
        for q, value in (
            ("0.5", latency.p50),
            ("0.9", latency.p90),
            ("0.95", latency.p95),
            ("0.99", latency.p99),
        ):
            lat.labels(q).set(value / 1000.0)
    Gauge(
        "modelsoak_run_throughput_samples_per_second",
        "Samples/s over the measured phases.",
        registry=registry,
    ).set(summary.totals.samples_per_s)
    Gauge("modelsoak_run_error_ratio", "Failed / all requests.", registry=registry).set(
        summary.totals.error_ratio
    )
    leak = summary.memory.leak
    if leak is not None and leak.slope_bytes_per_s is not None:
        Gauge(
            "modelsoak_run_leak_slope_bytes_per_second", "Server memory trend (Theil-Sen).", registry=registry
        ).set(leak.slope_bytes_per_s)
    push_to_gateway(url, job="modelsoak", grouping_key={"run_id": summary.run_id}, registry=registry)
