"""The training dashboard: a `modelsoak-train bench` run (or any run with
`--metrics-port`) as it trains -- throughput, step time and its split, loss,
accuracy, learning rate, gradient norm, memory, GPU -- and the summaries
training Jobs pushed to the Pushgateway.

Variables: $run_id, $model, $instance (the training processes' metrics
addresses, one per rank). GPU panels show no data without a GPU; the "GPU
metrics" panel says why (modelsoak_training_gpu_metrics_info{reason})."""

from __future__ import annotations

from typing import Any

from exporters.grafana import Panel, Q, Row, alerts_annotation, bool_mapping, dashboard, query_variable

RI = "$__rate_interval"
T = 'run_id=~"$run_id", instance=~"$instance"'  # live series of the training processes
R = 'run_id=~"$run_id"'  # pushed summaries
NO_GPU = "no GPU metrics: see the GPU metrics panel"
P = "modelsoak_training_"


def _step_q(q: float) -> str:
    return (
        f"histogram_quantile({q}, sum by (run_id, le) (rate({P}step_duration_seconds_bucket{{{T}}}[{RI}])))"
    )


def _throughput_row() -> Row:
    tput = Panel(
        "timeseries",
        "Throughput",
        [
            Q(f"sum by (run_id) (rate({P}samples_total{{{T}}}[{RI}]))", "{{run_id}} samples/s"),
            Q(f"sum by (run_id) ({P}samples_per_second{{{T}}})", "{{run_id}} last log interval"),
        ],
        w=8,
        description="Samples per second over all ranks. A drop at constant batch size is a slower "
        "step: the split panel says which phase grew.",
    )
    steps = Panel(
        "timeseries",
        "Step time (p50 / p99)",
        [Q(_step_q(0.5), "{{run_id}} p50"), Q(_step_q(0.99), "{{run_id}} p99")],
        unit="s",
        w=8,
    )
    split = Panel(
        "timeseries",
        "Step time split (share of wall time)",
        [
            Q(
                f"sum by (phase) (rate({P}step_phase_seconds_total{{{T}}}[{RI}])) / ignoring (phase) group_left "
                f"sum(rate({P}step_duration_seconds_sum{{{T}}}[{RI}]))",
                "{{phase}}",
            )
        ],
        unit="percentunit",
        stack=True,
        w=8,
        description="Data-loading wait, host-to-device copy, forward, backward, optimizer step. "
        "What is left to 100 % is loop overhead or the device idling between launches.",
    )
    return Row("Throughput and steps", [tput, steps, split])


def _learning_row() -> Row:
    loss = Panel("timeseries", "Loss", [Q(f"{P}loss{{{T}}}", "{{run_id}} rank {{rank}}")], w=6)
    acc = Panel(
        "timeseries",
        "Validation accuracy",
        [Q(f"max by (run_id) ({P}validation_accuracy_ratio{{{T}}})", "{{run_id}}")],
        unit="percentunit",
        w=6,
        no_value="no epoch evaluated yet",
    )
    lr = Panel(
        "timeseries", "Learning rate", [Q(f"max by (run_id) ({P}learning_rate{{{T}}})", "{{run_id}}")], w=4
    )
    grad = Panel(
        "timeseries",
        "Gradient norm",
        [Q(f"{P}grad_norm{{{T}}}", "{{run_id}} rank {{rank}}")],
        w=4,
        description="Total L2 norm of the gradients, read every log interval.",
    )
    nonfinite = Panel(
        "timeseries",
        "Non-finite loss steps",
        [Q(f"sum by (run_id) (increase({P}nonfinite_loss_steps_total{{{T}}}[{RI}]))", "{{run_id}}")],
        w=4,
        thresholds=[(None, "green"), (1, "red")],
    )
    return Row("Learning", [loss, acc, lr, grad, nonfinite])


def _memory_gpu_row() -> Row:
    mem = Panel(
        "timeseries",
        "Memory",
        [
            Q(f"{P}memory_bytes{{{T}}}", "{{run_id}} rank {{rank}} {{kind}}"),
            Q(f"max by (run_id) ({P}memory_limit_bytes{{{T}}})", "{{run_id}} limit"),
        ],
        unit="bytes",
        w=8,
    )
    status = Panel(
        "stat",
        "GPU metrics",
        [
            Q(
                f"max by (instance, status, reason) ({P}gpu_metrics_info{{{T}}})",
                "{{instance}}: {{status}} {{reason}}",
                instant=True,
            )
        ],
        w=4,
        options={"textMode": "name", "colorMode": "none"},
    )
    util = Panel(
        "timeseries",
        "GPU utilisation",
        [Q(f"{P}gpu_utilization_ratio{{{T}}}", "{{run_id}} rank {{rank}}")],
        unit="percentunit",
        w=6,
        thresholds=[(None, "red"), (0.8, "green")],
        no_value=NO_GPU,
    )
    power = Panel(
        "timeseries",
        "GPU power",
        [Q(f"{P}gpu_power_watts{{{T}}}", "{{run_id}} rank {{rank}}")],
        unit="watt",
        w=6,
        no_value=NO_GPU,
    )
    return Row("Memory and GPU", [mem, status, util, power])


def _runs_row() -> Row:
    RP = P + "run_"
    verdict = Panel(
        "stat",
        "Training run verdicts",
        [Q(f"max by (run_id) ({RP}passed{{{R}}})", "{{run_id}}", instant=True)],
        w=6,
        mappings=bool_mapping(("not PASS", "red"), ("PASS", "green")),
        thresholds=[(None, "red"), (1, "green")],
    )
    cols = [
        ("samples_per_second", "samples/s"),
        ("epoch_seconds", "slowest epoch (s)"),
        ("peak_memory_bytes", "peak memory (B)"),
        ("time_to_accuracy_seconds", "time to accuracy (s)"),
        ("exit_code", "exit code"),
    ]
    summary = Panel(
        "table",
        "Training run summaries (Pushgateway)",
        [Q(f"max by (run_id) ({RP}{name}{{{R}}})", instant=True, table=True) for name, _ in cols],
        w=18,
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {f"Value #{chr(65 + i)}": label for i, (_, label) in enumerate(cols)},
                },
            },
        ],
    )
    checks = Panel(
        "table",
        "Template targets by run",
        [Q(f"max by (run_id, check, status) ({RP}check_passed{{{R}}})", instant=True, table=True)],
        w=24,
        mappings=bool_mapping(("not passed", "red"), ("passed", "green")),
    )
    return Row("Training runs (Pushgateway)", [verdict, summary, checks])


def training() -> dict[str, Any]:
    variables = [
        # Live runs and runs only the Pushgateway remembers (finished Jobs).
        query_variable("run_id", "Run", f'label_values({{__name__=~"{P}(info|run_passed)"}}, run_id)'),
        query_variable("model", "Model", f'label_values({P}info{{run_id=~"$run_id"}}, model)'),
        query_variable(
            "instance",
            "Process",
            f'label_values({P}info{{run_id=~"$run_id", model=~"$model"}}, instance)',
            "Metrics addresses of the training processes (one per rank).",
        ),
    ]
    return dashboard(
        "modelsoak-training",
        "modelsoak — training",
        "A training run as it trains: throughput, step time and its split, loss, accuracy, memory, GPU; "
        "and the summaries training Jobs pushed to the Pushgateway.",
        [_throughput_row(), _learning_row(), _memory_gpu_row(), _runs_row()],
        variables,
        annotations=[alerts_annotation()],
    )
