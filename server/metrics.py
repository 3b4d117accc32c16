"""The server's Prometheus metrics and JSON /stats, read from ServerCore on every scrape.

Nothing here sits on the request path: the scheduler accumulates statistics
(server/stats.py), the memory sampler keeps its series (server/memory.py), and
this collector turns snapshots of both into metric families when scraped.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psutil
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from server import __version__
from server.stats import HistogramSnapshot, StatsSnapshot

if TYPE_CHECKING:
    from server.core import ServerCore

_GPU_KEY = re.compile(r"gpu(\d+)_(memory_used_bytes|memory_total_bytes|utilization_percent|power_watts)$")


def _buckets(h: HistogramSnapshot) -> list[tuple[str, float]]:
    out = [(repr(float(b)), float(c)) for b, c in zip(h.bounds, h.cumulative[:-1], strict=True)]
    out.append(("+Inf", float(h.cumulative[-1])))
    return out


class ServerCollector(Collector):
    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self._process = psutil.Process()

    def collect(self) -> Iterator[Metric]:
        yield from self._server_info()
        yield from self._models([m.stats.snapshot() for m in self.core.registry.loaded()])
        yield from self._generation()
        yield from self._resources()
        yield from self._leak()
        yield from self._admin()

    def _admin(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "modelsoak_admin_refused",
            "Admin actions refused, by action (profiling, repository) and reason "
            "(disabled, missing_token, bad_token).",
            labels=["action", "reason"],
        )
        for (action, reason), n in sorted(self.core.admin.refused().items()):
            refused.add_metric([action, reason], n)
        yield refused

    def _server_info(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "modelsoak_server_info", "Server version and device (value 1).", labels=["version", "device"]
        )
        info.add_metric([__version__, self.core.device], 1)
        yield info
        up = GaugeMetricFamily("modelsoak_server_ready", "1 when the server takes inference requests.")
        up.add_metric([], 1 if self.core.ready() else 0)
        yield up
        start = GaugeMetricFamily("modelsoak_server_start_time_seconds", "Unix time the server started.")
        start.add_metric([], self.core.started_at)
        yield start

    def _models(self, snaps: list[StatsSnapshot]) -> Iterator[Metric]:
        mv = ["model", "version"]
        minfo = GaugeMetricFamily(
            "modelsoak_model_info",
            "Served model (value 1).",
            labels=[*mv, "backend", "platform", "device", "sha256"],
        )
        inst = GaugeMetricFamily(
            "modelsoak_model_instances", "Model instances executing side by side.", labels=mv
        )
        maxb = GaugeMetricFamily(
            "modelsoak_model_max_batch_size", "Largest batch the batcher forms.", labels=mv
        )
        for m in self.core.registry.loaded():
            i = m.info
            minfo.add_metric([i.name, i.version, i.backend, i.platform, i.device, i.sha256[:16]], 1)
            inst.add_metric([i.name, i.version], i.instances)
            maxb.add_metric([i.name, i.version], i.max_batch_size)
        yield from (minfo, inst, maxb)
        reqs = CounterMetricFamily(
            "modelsoak_requests", "Inference requests by gRPC status.", labels=[*mv, "status"]
        )
        infs = CounterMetricFamily(
            "modelsoak_inferences", "Samples inferred (a batch of 8 counts 8).", labels=mv
        )
        execs = CounterMetricFamily("modelsoak_executions", "Model executions (formed batches).", labels=mv)
        phase = HistogramMetricFamily(
            "modelsoak_request_duration_seconds",
            "Server-side time of a request by phase: queue, batch_assembly, h2d, compute, d2h, total.",
            labels=[*mv, "phase"],
        )
        bsize = HistogramMetricFamily("modelsoak_batch_size", "Samples per model execution.", labels=mv)
        depth = GaugeMetricFamily(
            "modelsoak_queue_depth", "Requests waiting in the batcher's queue.", labels=mv
        )
        flight = GaugeMetricFamily("modelsoak_requests_in_flight", "Requests queued or executing.", labels=mv)
        for s in snaps:
            key = [s.model, s.version]
            for status, n in sorted(s.outcomes.items()):
                reqs.add_metric([*key, status], n)
            infs.add_metric(key, s.inference_count)
            execs.add_metric(key, s.execution_count)
            for name, h in s.phase_histograms.items():
                phase.add_metric([*key, name], _buckets(h), h.sum)
            bsize.add_metric(key, _buckets(s.batch_size_histogram), s.batch_size_histogram.sum)
            depth.add_metric(key, s.queue_depth)
            flight.add_metric(key, s.in_flight)
        yield from (reqs, infs, execs, phase, bsize, depth, flight)

    def _generation(self) -> Iterator[Metric]:
        """Streaming models: tokens, TTFT / ITL / E2E, sequences, KV cache."""
        mv = ["model", "version"]
        prompt = CounterMetricFamily("modelsoak_prompt_tokens", "Prompt tokens of generations.", labels=mv)
        made = CounterMetricFamily("modelsoak_generation_tokens", "Tokens generated.", labels=mv)
        ended = CounterMetricFamily(
            "modelsoak_generations", "Generations ended, by reason (length, stop, cancelled, error).",
            labels=[*mv, "reason"],
        )  # fmt: skip
        hists = {
            "time_to_first_token": HistogramMetricFamily(
                "modelsoak_time_to_first_token_seconds", "Arrival to first token of a generation.", labels=mv
            ),
            "inter_token_latency": HistogramMetricFamily(
                "modelsoak_inter_token_latency_seconds", "Time between two tokens of a generation.", labels=mv
            ),
            "e2e_request_latency": HistogramMetricFamily(
                "modelsoak_e2e_request_latency_seconds", "Arrival to last token of a generation.", labels=mv
            ),
            "generation_queue_time": HistogramMetricFamily(
                "modelsoak_generation_queue_time_seconds",
                "Arrival to admission into the running batch.",
                labels=mv,
            ),
            "prefill_time": HistogramMetricFamily(
                "modelsoak_prefill_time_seconds", "Prefill of the prompt (tiny-lm; stream-sleep has none).", labels=mv
            ),
        }
        occ = HistogramMetricFamily(
            "modelsoak_batch_occupancy", "Sequences in one decode step (continuous batching).", labels=mv
        )
        running = GaugeMetricFamily("modelsoak_sequences_running", "Sequences generating now.", labels=mv)
        waiting = GaugeMetricFamily(
            "modelsoak_sequences_waiting", "Generations queued for a slot.", labels=mv
        )
        kv = GaugeMetricFamily("modelsoak_kv_cache_tokens", "Tokens held in the KV cache.", labels=mv)
        kv_cap = GaugeMetricFamily(
            "modelsoak_kv_cache_capacity_tokens", "KV-cache budget in tokens.", labels=mv
        )
        for m in self.core.registry.loaded():
            engine = m.engine
            if engine is None:
                continue
            key = [m.info.name, m.info.version]
            s = engine.stats.snapshot()
            prompt.add_metric(key, s.prompt_tokens)
            made.add_metric(key, s.generation_tokens)
            for reason, n in sorted(s.finished.items()):
                ended.add_metric([*key, reason], n)
            for name, h in s.histograms.items():
                hists[name].add_metric(key, _buckets(h), h.sum)
            occ.add_metric(key, _buckets(s.occupancy), s.occupancy.sum)
            running.add_metric(key, engine.running())
            waiting.add_metric(key, engine.waiting())
            used, capacity = engine.kv_tokens()
            kv.add_metric(key, used)
            kv_cap.add_metric(key, capacity)
        yield from (prompt, made, ended, *hists.values(), occ, running, waiting, kv, kv_cap)

    def _resources(self) -> Iterator[Metric]:
        latest = self.core.sampler.latest()
        rss = GaugeMetricFamily("modelsoak_process_resident_memory_bytes", "Server process RSS.")
        try:
            rss.add_metric([], float(self._process.memory_info().rss))
            cpu_t = self._process.cpu_times()
            cpu = CounterMetricFamily(
                "modelsoak_process_cpu_seconds", "Server process CPU time (user+system)."
            )
            cpu.add_metric([], cpu_t.user + cpu_t.system)
            yield cpu
        except psutil.Error:
            pass
        yield rss
        for key, name, doc in (
            (
                "torch_cuda_allocated_bytes",
                "modelsoak_torch_cuda_memory_allocated_bytes",
                "torch CUDA memory allocated.",
            ),
            (
                "torch_cuda_reserved_bytes",
                "modelsoak_torch_cuda_memory_reserved_bytes",
                "torch CUDA memory reserved by the caching allocator.",
            ),
            (
                "torch_cuda_max_allocated_bytes",
                "modelsoak_torch_cuda_memory_peak_bytes",
                "torch CUDA peak memory allocated.",
            ),
        ):
            if key in latest:
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], latest[key])
                yield g
        yield from self._gpus(latest)

    def _gpus(self, latest: dict[str, float]) -> Iterator[Metric]:
        gpus = {g.index: g for g in self.core.sampler.gpus()}
        reason = self.core.sampler.gpu_status()
        info = GaugeMetricFamily(
            "modelsoak_gpu_metrics_info",
            "Whether GPU metrics are exported, and why not (value 1).",
            labels=["status", "reason"],
        )
        info.add_metric(["absent" if reason else "present", reason or ""], 1)
        yield info
        fams = {
            "memory_used_bytes": GaugeMetricFamily(
                "modelsoak_gpu_memory_used_bytes", "GPU memory used (NVML).", labels=["gpu", "gpu_uuid"]
            ),
            "memory_total_bytes": GaugeMetricFamily(
                "modelsoak_gpu_memory_total_bytes", "GPU memory total (NVML).", labels=["gpu", "gpu_uuid"]
            ),
            "utilization_percent": GaugeMetricFamily(
                "modelsoak_gpu_utilization_ratio",
                "GPU busy fraction (NVML), 0..1.",
                labels=["gpu", "gpu_uuid"],
            ),
            "power_watts": GaugeMetricFamily(
                "modelsoak_gpu_power_watts", "GPU power draw (NVML).", labels=["gpu", "gpu_uuid"]
            ),
        }
        seen = set()
        for key, value in latest.items():
            m = _GPU_KEY.match(key)
            if not m:
                continue
            idx, what = int(m.group(1)), m.group(2)
            uuid = gpus[idx].uuid if idx in gpus else str(idx)
            fams[what].add_metric([str(idx), uuid], value / 100.0 if what == "utilization_percent" else value)
            seen.add(what)
        yield from (fams[w] for w in fams if w in seen)

    def _leak(self) -> Iterator[Metric]:
        slope = GaugeMetricFamily(
            "modelsoak_memory_leak_slope_bytes_per_second",
            "Theil-Sen slope of a memory series after warm-up.",
            labels=["source"],
        )
        sus = GaugeMetricFamily(
            "modelsoak_memory_leak_suspected",
            "1 when a memory series grows significantly and persistently.",
            labels=["source"],
        )
        n = GaugeMetricFamily(
            "modelsoak_memory_leak_samples", "Samples the leak verdict used.", labels=["source"]
        )
        for src, v in sorted(self.core.leaks.verdicts().items()):
            slope.add_metric([src], v.slope_bytes_per_s if math.isfinite(v.slope_bytes_per_s) else 0.0)
            sus.add_metric([src], 1 if v.suspected else 0)
            n.add_metric([src], v.samples)
        yield from (slope, sus, n)


def build_registry(core: ServerCore) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(core))
    return registry


def _plain(value: float) -> str:
    """Plain decimal, as Triton prints and perf_analyzer's parser expects."""
    return f"{value:.6f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def triton_gpu_text(core: ServerCore) -> str:
    """Triton's GPU metric names (nv_gpu_*{gpu_uuid}) in plain decimal; empty without a GPU."""
    latest = core.sampler.latest()
    gpus = {g.index: g.uuid for g in core.sampler.gpus()}
    rows: dict[str, list[str]] = {}
    names = {
        "utilization_percent": ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)"),
        "memory_used_bytes": ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes"),
        "memory_total_bytes": ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes"),
        "power_watts": ("nv_gpu_power_usage", "GPU power usage in watts"),
    }
    for key, value in sorted(latest.items()):
        m = _GPU_KEY.match(key)
        if not m:
            continue
        idx, what = int(m.group(1)), m.group(2)
        v = value / 100.0 if what == "utilization_percent" else value
        rows.setdefault(what, []).append(f'{names[what][0]}{{gpu_uuid="{gpus.get(idx, idx)}"}} {_plain(v)}')
    lines = []
    for what, (name, doc) in names.items():
        if what in rows:
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge", *rows[what]]
    return "\n".join(lines) + "\n" if lines else ""


def stats_document(core: ServerCore) -> dict[str, Any]:
    """JSON view for the load generator: models, memory now and at peak, leak verdicts."""
    sampler = core.sampler
    memory: dict[str, Any] = {}
    for src in sampler.sources():
        _, v = sampler.series(src)
        if len(v):
            memory[src] = {"latest": float(v[-1]), "peak": float(v.max()), "samples": len(v)}
    models = {}
    for m in core.registry.loaded():
        s = m.stats.snapshot()
        models[m.info.name] = {
            "version": s.version,
            "backend": m.info.backend,
            "device": m.info.device,
            "sha256": m.info.sha256,
            "inference_count": s.inference_count,
            "execution_count": s.execution_count,
            "outcomes": s.outcomes,
            "phase_seconds_sum": {p: h.sum for p, h in s.phase_histograms.items()},
            "phase_count": {p: h.count for p, h in s.phase_histograms.items()},
            "queue_depth": s.queue_depth,
            "in_flight": s.in_flight,
        }
    return {
        "server": {
            "name": "modelsoak",
            "version": __version__,
            "device": core.device,
            "uptime_s": time.time() - core.started_at,
            "ready": core.ready(),
        },
        "gpu": {"status": sampler.gpu_status(), "gpus": [g.__dict__ for g in sampler.gpus()]},
        "memory": memory,
        "leaks": {src: v.as_dict() for src, v in core.leaks.verdicts().items()},
        "models": models,
    }
