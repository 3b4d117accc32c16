"""Live Prometheus metrics of a training process, and its summary pushed to a
Pushgateway at the end (for batch jobs, which are gone before a scrape).

The training loop never touches a metric: every `log_every` steps it hands the
monitor its live state (training/bench.py `LiveRun`), the monitor folds the
steps it has not seen into plain totals, and a collector turns those into
metric families when Prometheus scrapes. A collector takes its
CollectorRegistry as a parameter; nothing uses the global registry.

Series (prefix modelsoak_training_, labels run_id and rank on all):
info{model, device}, steps_total, samples_total, samples_per_second,
step_duration_seconds (histogram), step_phase_seconds_total{phase},
loss, validation_accuracy_ratio, learning_rate, grad_norm,
nonfinite_loss_steps_total, epoch, epoch_duration_seconds,
memory_bytes{kind}, memory_limit_bytes, gpu_utilization_ratio,
gpu_power_watts, gpu_metrics_info{status, reason}, running.
"""

from __future__ import annotations

import bisect
import errno
import math
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from training.bench_probes import memory_limit_bytes
from training.errors import SetupError
from training.steptimer import PHASES

P = "modelsoak_training_"
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PUSH_JOB = "modelsoak-training"


class _State:
    """Totals the collector reads; written under a lock by the training thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen = 0
        self.steps = 0
        self.samples = 0.0
        self.rate = 0.0
        self.phase_s = dict.fromkeys(PHASES, 0.0)
        self.buckets = [0] * (len(STEP_BUCKETS) + 1)
        self.step_sum = 0.0
        self.values: dict[str, float] = {}
        self.memory: dict[str, float] = {}
        self.gpu: dict[str, float] = {}
        self.running = 1.0


class TrainingMonitor:
    """A `StepHook` for training/bench.py that serves /metrics on `port` (0: any free port)."""

    def __init__(
        self,
        run_id: str,
        model: str,
        rank: int = 0,
        port: int | None = 0,
        addr: str = "0.0.0.0",
        registry: CollectorRegistry | None = None,
        device: str = "cpu",
    ) -> None:
        self.labels = {"run_id": run_id, "rank": str(rank)}
        self.model, self.device = model, device
        self.state = _State()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(_Collector(self))
        self.server: Any = None
        self.port: int | None = None
        if port is not None:
            try:
                self.server, _ = start_http_server(port, addr=addr, registry=self.registry)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise SetupError(
                    f"--metrics-port {port}: metrics port {port} on {addr} is already in use; expected a free port"
                ) from None
            self.port = int(self.server.server_port)
            print(f"training metrics on http://{addr}:{self.port}/metrics", flush=True)
        self.gpu_reason = ""

    def on_steps(self, live: Any) -> None:
        live.timer.flush()
        rec = live.timer.records(self.state.seen)
        st = self.state
        with st.lock:
            st.seen += len(rec)
            st.steps = live.step
            st.samples += float(rec.samples.sum())
            wall = float(rec.step_s.sum())
            st.rate = float(rec.samples.sum()) / wall if wall > 0 else st.rate
            for p in PHASES:
                col = rec.phase_s[p]
                st.phase_s[p] += float(col[~(col != col)].sum())  # NaN: an event not resolved yet
            for v in rec.step_s:
                st.buckets[bisect.bisect_left(STEP_BUCKETS, float(v))] += 1
            st.step_sum += wall
            st.values["loss"] = live.loss if live.loss is not None else math.nan
            st.values["lr"] = live.lr
            if live.grad_norm is not None:
                st.values["grad_norm"] = live.grad_norm
            st.values["nonfinite"] = float(live.nonfinite)
            st.values["epoch"] = float(live.epoch)
            self._sample(live.sampler)

    def _sample(self, sampler: Any) -> None:
        self.device = "cuda" if sampler.cuda else "cpu"
        self.gpu_reason = sampler.gpu_reason
        st = self.state
        st.memory["rss"] = sampler.rss.v[-1] if sampler.rss.v else 0.0
        if sampler.cuda and sampler.cuda_allocated.v:
            st.memory["cuda_allocated"] = sampler.cuda_allocated.v[-1]
            st.memory["cuda_reserved"] = sampler.cuda_reserved.v[-1]
        if "limit" not in st.memory:
            st.memory["limit"] = memory_limit_bytes(sampler.cuda)
        if sampler.gpu_util.v:
            st.gpu["util"] = sampler.gpu_util.v[-1]
            st.gpu["power"] = sampler.gpu_power_w.v[-1]

    def on_epoch(self, live: Any, epoch: Any) -> None:
        self.on_steps(live)
        with self.state.lock:
            self.state.values["epoch_duration"] = epoch.wall_s
            if epoch.accuracy is not None:
                self.state.values["accuracy"] = epoch.accuracy

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        with self.state.lock:
            self.state.running = 0.0

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class _Collector(Collector):
    def __init__(self, mon: TrainingMonitor) -> None:
        self.mon = mon

    def collect(self) -> Iterator[Metric]:
        mon, st = self.mon, self.mon.state
        names, vals = list(mon.labels), list(mon.labels.values())

        def gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
            if value is not None:
                g = GaugeMetricFamily(P + name, doc, labels=names)
                g.add_metric(vals, value)
                yield g

        with st.lock:
            info = GaugeMetricFamily(
                P + "info", "The training run (value 1).", labels=[*names, "model", "device"]
            )
            info.add_metric([*vals, mon.model, mon.device], 1.0)
            yield info
            yield from gauge("running", "1 while the run trains, 0 once it finished.", st.running)
            c = CounterMetricFamily(P + "steps", "Optimizer steps taken.", labels=names)
            c.add_metric(vals, float(st.steps))
            yield c
            c = CounterMetricFamily(P + "samples", "Training samples processed.", labels=names)
            c.add_metric(vals, st.samples)
            yield c
            yield from gauge("samples_per_second", "Throughput over the last log interval.", st.rate)
            h = HistogramMetricFamily(
                P + "step_duration_seconds", "Wall time of a training step.", labels=names
            )
            cum, buckets = 0, []
            for bound, n in zip((*STEP_BUCKETS, math.inf), st.buckets, strict=True):
                cum += n
                buckets.append(("+Inf" if bound == math.inf else repr(bound), float(cum)))
            h.add_metric(vals, buckets, st.step_sum)
            yield h
            ph = CounterMetricFamily(
                P + "step_phase_seconds",
                "Time in each phase of the steps (data wait, copy, ...).",
                labels=[*names, "phase"],
            )
            for p in PHASES:
                ph.add_metric([*vals, p], st.phase_s[p])
            yield ph
            v = st.values
            yield from gauge("loss", "Training loss at the last log interval.", v.get("loss"))
            yield from gauge(
                "validation_accuracy_ratio", "Validation accuracy after the last epoch.", v.get("accuracy")
            )
            yield from gauge("learning_rate", "Learning rate of the first parameter group.", v.get("lr"))
            yield from gauge(
                "grad_norm", "Total L2 norm of the gradients at the last log interval.", v.get("grad_norm")
            )
            c = CounterMetricFamily(
                P + "nonfinite_loss_steps", "Steps whose loss was NaN or infinite.", labels=names
            )
            c.add_metric(vals, v.get("nonfinite", 0.0))
            yield c
            yield from gauge("epoch", "Current epoch (1-based).", v.get("epoch"))
            yield from gauge(
                "epoch_duration_seconds", "Training time of the last complete epoch.", v.get("epoch_duration")
            )
            mem = GaugeMetricFamily(
                P + "memory_bytes",
                "Process RSS, and torch CUDA allocated / reserved.",
                labels=[*names, "kind"],
            )
            for kind in ("rss", "cuda_allocated", "cuda_reserved"):
                if kind in st.memory:
                    mem.add_metric([*vals, kind], st.memory[kind])
            yield mem
            yield from gauge(
                "memory_limit_bytes", "GPU memory, or host memory on CPU.", st.memory.get("limit")
            )
            yield from gauge("gpu_utilization_ratio", "NVML GPU utilisation.", st.gpu.get("util"))
            yield from gauge("gpu_power_watts", "NVML power draw.", st.gpu.get("power"))
            gi = GaugeMetricFamily(
                P + "gpu_metrics_info",
                "Whether GPU metrics are exported, and if not why.",
                labels=[*names, "status", "reason"],
            )
            present = "util" in st.gpu
            gi.add_metric(
                [*vals, "present" if present else "absent", "" if present else mon.gpu_reason or "no GPU"],
                1.0,
            )
            yield gi


def push_summary(url: str, s: dict[str, Any]) -> None:
    """The summary's figures as gauges (job modelsoak-training, grouping key run_id)."""
    reg = CollectorRegistry()
    R = P + "run_"

    def put(name: str, doc: str, value: float | None) -> None:
        if value is not None:
            Gauge(R + name, doc, registry=reg).set(float(value))

    put("passed", "1 when every judged target held.", 1.0 if s["verdict"] == "PASS" else 0.0)
    put("exit_code", "Exit code: 0 pass, 3 fail, 4 not measured / invalid, 2 setup error.", s["exit_code"])
    put("samples_per_second", "Throughput (warm-up excluded), all ranks.", s["steps"].get("samples_per_s"))
    put(
        "step_p99_seconds",
        "Step time p99.",
        (s["steps"].get("p99_ms") or 0) / 1e3 if s["steps"].get("count") else None,
    )
    full = [e["wall_s"] for e in s["epochs"] if e["complete"]]
    put("epoch_seconds", "Slowest complete epoch.", max(full) if full else None)
    put("peak_memory_bytes", "Peak training memory.", s["memory"]["peak_bytes"])
    put(
        "time_to_accuracy_seconds",
        "Time to the target accuracy (MLPerf mean over seeds).",
        s["accuracy"].get("time_to_accuracy_s"),
    )
    put("epochs_to_accuracy", "Epochs to the target accuracy.", s["accuracy"].get("epochs_to_accuracy"))
    put("gpu_utilization_ratio", "NVML mean GPU utilisation.", s["gpu"].get("util_mean"))
    put("mfu_ratio", "Model FLOPs utilisation.", s["flops"].get("mfu"))
    put("world_size", "Processes.", s.get("world_size", 1))
    put(
        "scaling_efficiency_ratio",
        "N-process throughput / (N x one process).",
        s.get("scaling", {}).get("efficiency"),
    )
    chk = Gauge(
        R + "check_passed",
        "Each template target: 1 pass, 0 fail or not measured.",
        ["check", "status"],
        registry=reg,
    )
    for c in s["checks"]:
        chk.labels(c["metric"].split(" (")[0], c["status"]).set(1.0 if c["status"] == "PASS" else 0.0)
    push_to_gateway(url, job=PUSH_JOB, grouping_key={"run_id": s["run_id"]}, registry=reg)
