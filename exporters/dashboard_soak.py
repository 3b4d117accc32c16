"""The soak dashboard: memory trends and the leak verdict over hours, latency,
errors and throughput, and the verdicts runs pushed to the Pushgateway."""

from __future__ import annotations

from typing import Any

from exporters.dashboard_specs import (
    LEAK_MAP,
    NO_GPU,
    I,
    R,
    cli_q,
    leak_stat,
    memory_panels,
    srv_q,
    throughput_row,
    variables,
)
from exporters.grafana import Panel, Q, Row, alerts_annotation, bool_mapping, dashboard


def soak() -> dict[str, Any]:
    growth = Panel(
        "stat",
        "RSS change over the time range",
        [Q(f"delta(modelsoak_process_resident_memory_bytes{{{I}}}[$__range])", "{{instance}}", instant=True)],
        unit="bytes",
        w=6,
    )
    projected = Panel(
        "timeseries",
        "RSS projected 24 h ahead (linear)",
        [Q(f"predict_linear(modelsoak_process_resident_memory_bytes{{{I}}}[1h], 86400)", "{{instance}}")],
        unit="bytes",
        w=6,
        description="Where RSS would be in a day at the last hour's rate.",
    )
    timeline = Panel(
        "state-timeline",
        "Leak verdict over time",
        [Q(f"max by (instance, source) (modelsoak_memory_leak_suspected{{{I}}})", "{{instance}} {{source}}")],
        w=12,
        mappings=LEAK_MAP,
        thresholds=[(None, "green"), (1, "red")],
    )
    gpu_mem = Panel(
        "timeseries",
        "GPU memory used",
        [Q(f"modelsoak_gpu_memory_used_bytes{{{I}}}", "{{instance}} GPU {{gpu}}")],
        unit="bytes",
        w=12,
        no_value=NO_GPU,
    )
    latency = Panel(
        "timeseries",
        "Latency percentiles",
        [
            Q(cli_q(0.5), "client p50"),
            Q(cli_q(0.99), "client p99"),
            Q(srv_q(0.5), "server {{model}} p50"),
            Q(srv_q(0.99), "server {{model}} p99"),
        ],
        unit="s",
        w=12,
    )
    memory = memory_panels(12)
    rows = [
        Row("Memory over hours", [*memory, growth, projected, timeline, gpu_mem, leak_stat(12)]),
        Row("Latency, errors, throughput", [latency, *throughput_row().panels[:2]]),
        _runs_row(),
    ]
    return dashboard(
        "modelsoak-soak",
        "modelsoak — soak",
        "Long runs: memory trends and the leak verdict over hours, latency, errors and throughput, "
        "and the verdicts runs pushed to the Pushgateway.",
        rows,
        variables("label_values(run_id)"),
        time_from="now-24h",
        refresh="1m",
        annotations=[alerts_annotation()],
    )


def _runs_row() -> Row:
    verdict = Panel(
        "stat",
        "Run verdicts",
        [Q(f"max by (run_id) (modelsoak_run_passed{{{R}}})", "{{run_id}}", instant=True)],
        w=8,
        mappings=bool_mapping(("FAIL", "red"), ("PASS", "green")),
        thresholds=[(None, "red"), (1, "green")],
    )
    summary = Panel(
        "table",
        "Run summaries (Pushgateway)",
        [
            Q(
                f'max by (run_id) (modelsoak_run_latency_seconds{{{R}, quantile="0.99"}})',
                instant=True,
                table=True,
            ),
            Q(
                f"max by (run_id) (modelsoak_run_throughput_samples_per_second{{{R}}})",
                instant=True,
                table=True,
            ),
            Q(f"max by (run_id) (modelsoak_run_error_ratio{{{R}}})", instant=True, table=True),
            Q(
                f"max by (run_id) (modelsoak_run_leak_slope_bytes_per_second{{{R}}})",
                instant=True,
                table=True,
            ),
            Q(f"max by (run_id) (modelsoak_run_exit_code{{{R}}})", instant=True, table=True),
        ],
        w=16,
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {
                        "Value #A": "p99 latency (s)",
                        "Value #B": "samples/s",
                        "Value #C": "error ratio",
                        "Value #D": "leak slope (B/s)",
                        "Value #E": "exit code",
                    },
                },
            },
        ],
    )
    slos = Panel(
        "table",
        "SLO checks by run",
        [Q(f"max by (run_id, slo) (modelsoak_run_slo_passed{{{R}}})", instant=True, table=True)],
        w=24,
        mappings=bool_mapping(("failed", "red"), ("passed", "green")),
    )
    return Row("Run verdicts (Pushgateway)", [verdict, summary, slos])
