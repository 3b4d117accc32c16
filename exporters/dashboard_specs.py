"""The live dashboard (while a test runs), and what the soak dashboard shares with it.

Variables: $datasource (any Prometheus), $model and $instance (server side:
models, and the server addresses that serve them), $run_id (load generator and
Pushgateway). Multi-value variables with "All" = ".*", so every selector uses =~.
GPU panels show no data on hosts without one; the "GPU metrics" panel says why
(modelsoak_gpu_metrics_info{reason}) rather than drawing made-up zeros.
"""

from __future__ import annotations

from typing import Any

from exporters.dashboard_stream import streaming_row
from exporters.grafana import Panel, Q, Row, alerts_annotation, bool_mapping, dashboard, query_variable

RI = "$__rate_interval"
M = 'model=~"$model", instance=~"$instance"'  # per-model server series
I = 'instance=~"$instance"'  # noqa: E741 - per-process server series
R = 'run_id=~"$run_id"'
NO_GPU = "no GPU metrics: see the GPU metrics panel"
NO_RUN = "no load generator metrics yet"


def srv_q(q: float, phases: str = 'phase="total"', by: str = "model") -> str:
    return (
        f"histogram_quantile({q}, sum by ({by}, le) (rate(modelsoak_request_duration_seconds_bucket"
        f"{{{M}, {phases}}}[{RI}])))"
    )


def cli_q(q: float) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate(modelsoak_client_request_duration_seconds_bucket{{{R}}}[{RI}])))"


def error_ratio(metric: str, sel: str, by: str) -> str:
    """Failed / all; 0 (not no data) while nothing fails, no data while nothing is sent."""
    grp = f"sum by ({by}) " if by else "sum "
    fails = f'{grp}(rate({metric}{{{sel}, status!="OK"}}[{RI}]))'
    total = f"{grp}(rate({metric}{{{sel}}}[{RI}]))"
    return f"({fails} or {total} * 0) / {total}"


def mean_phase() -> str:
    sel = f'{M}, phase!="total"'
    return (
        f"sum by (phase) (rate(modelsoak_request_duration_seconds_sum{{{sel}}}[{RI}]))"
        f" / sum by (phase) (rate(modelsoak_request_duration_seconds_count{{{sel}}}[{RI}]))"
    )


LEAK_MAP = bool_mapping(("no leak", "green"), ("LEAK", "red"))


def _latency_rows() -> list[Row]:
    client_vs_server = Panel(
        "timeseries",
        "Latency: client vs server (p50 / p90 / p99)",
        [
            Q(cli_q(0.5), "client p50"),
            Q(cli_q(0.9), "client p90"),
            Q(cli_q(0.99), "client p99"),
            Q(srv_q(0.5), "server {{model}} p50"),
            Q(srv_q(0.9), "server {{model}} p90"),
            Q(srv_q(0.99), "server {{model}} p99"),
        ],
        unit="s",
        w=12,
        description="Client latency from the load generator's merged HDR histograms "
        "against the server's own queue-to-response time. The gap is network, gRPC and client time.",
    )
    phases = Panel(
        "timeseries",
        "Server time per request by phase (mean, stacked)",
        [Q(mean_phase(), "{{phase}}")],
        unit="s",
        stack=True,
        w=12,
        description="Where the server's time goes: queue wait, batch "
        "assembly, host-to-device copy, compute, device-to-host copy.",
    )
    phase_p99 = Panel(
        "timeseries",
        "Server phase p99",
        [Q(srv_q(0.99, 'phase!="total"', "phase"), "{{phase}}")],
        unit="s",
        w=12,
    )
    return [Row("Latency", [client_vs_server, phases, phase_p99])]


def throughput_row() -> Row:
    tput = Panel(
        "timeseries",
        "Throughput",
        [
            Q(f'sum(rate(modelsoak_client_requests_total{{{R}, status="OK"}}[{RI}]))', "client OK req/s"),
            Q(f"sum(modelsoak_client_requests_per_second{{{R}}})", "client req/s (Locust)"),
            Q(f"sum by (model) (rate(modelsoak_requests_total{{{M}}}[{RI}]))", "server {{model}} req/s"),
            Q(
                f"sum by (model) (rate(modelsoak_inferences_total{{{M}}}[{RI}]))",
                "server {{model}} samples/s",
            ),
        ],
        unit="reqps",
        w=8,
    )
    errors = Panel(
        "timeseries",
        "Error ratio",
        [
            Q(error_ratio("modelsoak_client_requests_total", R, ""), "client"),
            Q(error_ratio("modelsoak_requests_total", M, "model"), "server {{model}}"),
        ],
        unit="percentunit",
        w=8,
        thresholds=[(None, "green"), (0.01, "red")],
    )
    by_status = Panel(
        "timeseries",
        "Failed requests by status",
        [
            Q(
                f'sum by (status) (rate(modelsoak_client_requests_total{{{R}, status!="OK"}}[{RI}]))',
                "client {{status}}",
            ),
            Q(
                f'sum by (model, status) (rate(modelsoak_requests_total{{{M}, status!="OK"}}[{RI}]))',
                "server {{model}} {{status}}",
            ),
        ],
        unit="reqps",
        w=8,
        no_value="no failures",
    )
    return Row("Throughput and errors", [tput, errors, by_status])


def _batching_row() -> Row:
    bs = Panel(
        "timeseries",
        "Batch size",
        [
            Q(
                f"sum by (model) (rate(modelsoak_batch_size_sum{{{M}}}[{RI}])) / "
                f"sum by (model) (rate(modelsoak_batch_size_count{{{M}}}[{RI}]))",
                "{{model}} mean",
            ),
            Q(
                f"histogram_quantile(0.99, sum by (model, le) (rate(modelsoak_batch_size_bucket{{{M}}}[{RI}])))",
                "{{model}} p99",
            ),
            Q(f"max by (model) (modelsoak_model_max_batch_size{{{M}}})", "{{model}} max"),
        ],
        w=12,
        description="Samples per model execution: the batcher's work. Mean far below max under load: "
        "raise max_queue_delay_us, or the load is too light to batch.",
    )
    queue = Panel(
        "timeseries",
        "Queue depth and requests in flight",
        [
            Q(f"sum by (model) (modelsoak_queue_depth{{{M}}})", "{{model}} queued"),
            Q(f"sum by (model) (modelsoak_requests_in_flight{{{M}}})", "{{model}} in flight"),
        ],
        w=12,
    )
    return Row("Batching and queue", [bs, queue])


def _gpu_row() -> Row:
    status = Panel(
        "stat",
        "GPU metrics",
        [
            Q(
                f"max by (instance, status, reason) (modelsoak_gpu_metrics_info{{{I}}})",
                "{{instance}}: {{status}} {{reason}}",
                instant=True,
            )
        ],
        w=6,
        options={"textMode": "name", "colorMode": "none"},
        description="Whether the server exports GPU metrics, and if not, why.",
    )
    util = Panel(
        "timeseries",
        "GPU utilisation",
        [Q(f"modelsoak_gpu_utilization_ratio{{{I}}}", "{{instance}} GPU {{gpu}}")],
        unit="percentunit",
        w=6,
        no_value=NO_GPU,
    )
    mem = Panel(
        "timeseries",
        "GPU memory",
        [
            Q(f"modelsoak_gpu_memory_used_bytes{{{I}}}", "{{instance}} GPU {{gpu}} used"),
            Q(f"modelsoak_gpu_memory_total_bytes{{{I}}}", "{{instance}} GPU {{gpu}} total"),
        ],
        unit="bytes",
        w=6,
        no_value=NO_GPU,
    )
    power = Panel(
        "timeseries",
        "GPU power",
        [Q(f"modelsoak_gpu_power_watts{{{I}}}", "{{instance}} GPU {{gpu}}")],
        unit="watt",
        w=6,
        no_value=NO_GPU,
    )
    return Row("GPU", [status, util, mem, power])


def memory_panels(w: int) -> list[Panel]:
    rss = Panel(
        "timeseries",
        "Server memory: RSS and torch CUDA",
        [
            Q(f"modelsoak_process_resident_memory_bytes{{{I}}}", "{{instance}} RSS"),
            Q(f"modelsoak_torch_cuda_memory_allocated_bytes{{{I}}}", "{{instance}} CUDA allocated"),
            Q(f"modelsoak_torch_cuda_memory_reserved_bytes{{{I}}}", "{{instance}} CUDA reserved"),
            Q(f"modelsoak_torch_cuda_memory_peak_bytes{{{I}}}", "{{instance}} CUDA peak"),
        ],
        unit="bytes",
        w=w,
    )
    slope = Panel(
        "timeseries",
        "Leak slope (Theil-Sen, per hour)",
        [Q(f"3600 * modelsoak_memory_leak_slope_bytes_per_second{{{I}}}", "{{instance}} {{source}}")],
        unit="bytes",
        w=w,
        description="The server's leak detector: robust slope of each memory series after "
        "warm-up, in bytes per hour. A slope alone is not a leak; see 'Leak suspected'.",
    )
    return [rss, slope]


def leak_stat(w: int) -> Panel:
    return Panel(
        "stat",
        "Leak suspected",
        [
            Q(
                f"max by (instance, source) (modelsoak_memory_leak_suspected{{{I}}})",
                "{{instance}} {{source}}",
                instant=True,
            )
        ],
        w=w,
        mappings=LEAK_MAP,
        thresholds=[(None, "green"), (1, "red")],
        description="1 when the trend is significant (Mann-Kendall) in the whole window and in both halves.",
    )


def _loadgen_row() -> Row:
    users = Panel(
        "timeseries", "Users", [Q(f"sum(modelsoak_client_users{{{R}}})", "users")], w=6, no_value=NO_RUN
    )
    workers = Panel(
        "timeseries",
        "Workers by state",
        [Q(f"sum by (state) (modelsoak_client_workers{{{R}}})", "{{state}}")],
        w=6,
        no_value=NO_RUN,
    )
    cpu = Panel(
        "timeseries",
        "Load-generator CPU",
        [Q(f"max by (worker) (modelsoak_client_cpu_ratio{{{R}}})", "{{worker}}")],
        unit="percentunit",
        w=6,
        thresholds=[(None, "green"), (0.9, "red")],
        no_value=NO_RUN,
        description="Above 90 % of a core the generator, not the server, sets the pace: add workers.",
    )
    sends = Panel(
        "timeseries",
        "Open-loop sends",
        [Q(f"sum by (outcome) (rate(modelsoak_client_openloop_sends_total{{{R}}}[{RI}]))", "{{outcome}}")],
        unit="reqps",
        w=6,
        no_value=NO_RUN,
        description="Scheduled sends on time, late, or dropped "
        "(open-loop mode only; all zero in closed loop).",
    )
    return Row("Load generator", [users, workers, cpu, sends])


def live() -> dict[str, Any]:
    cpu = Panel(
        "timeseries",
        "Server CPU",
        [Q(f"rate(modelsoak_process_cpu_seconds_total{{{I}}}[{RI}])", "{{instance}}")],
        unit="percentunit",
        w=6,
    )
    rows = [
        *_latency_rows(),
        throughput_row(),
        _batching_row(),
        streaming_row(),
        _gpu_row(),
        Row("Memory and leaks", [*memory_panels(9), leak_stat(6)]),
        Row("Server process", [cpu]),
        _loadgen_row(),
    ]
    return dashboard(
        "modelsoak-live",
        "modelsoak — live",
        "A load test as it runs: client vs server latency, throughput, errors, batching, GPU, memory.",
        rows,
        variables("label_values(modelsoak_client_run_info, run_id)"),
        annotations=[alerts_annotation()],
    )


def variables(run_query: str) -> list[dict[str, Any]]:
    return [
        query_variable("model", "Model", "label_values(modelsoak_model_info, model)"),
        query_variable(
            "instance",
            "Server",
            'label_values(modelsoak_model_info{model=~"$model"}, instance)',
            "Server metrics addresses serving the selected models.",
        ),
        query_variable("run_id", "Run", run_query),
    ]
