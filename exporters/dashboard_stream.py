"""The live dashboard's row for streaming (token-generating) models: TTFT, inter-token
latency, tokens per second, sequences and KV cache, continuous-batching occupancy."""

from __future__ import annotations

from exporters.grafana import Panel, Q, Row

RI = "$__rate_interval"
M = 'model=~"$model", instance=~"$instance"'


def _quantiles(metric: str) -> list[Q]:
    """p50 and p99 by model of a histogram in seconds."""
    return [
        Q(
            f"histogram_quantile({q}, sum by (model, le) (rate({metric}_bucket{{{M}}}[{RI}])))",
            f"{{{{model}}}} p{p}",
        )
        for q, p in ((0.5, 50), (0.99, 99))
    ]


def streaming_row() -> Row:
    ttft = Panel(
        "timeseries",
        "Time to first token",
        _quantiles("modelsoak_time_to_first_token_seconds"),
        unit="s",
        w=6,
        description="Arrival to first token, server side: queue wait plus prefill. "
        "The ModelsoakTimeToFirstTokenHigh alert watches the p99.",
    )
    itl = Panel(
        "timeseries",
        "Inter-token latency",
        _quantiles("modelsoak_inter_token_latency_seconds"),
        unit="s",
        w=6,
        description="Time between two tokens of one generation; grows with the decode batch.",
    )
    tokens = Panel(
        "timeseries",
        "Tokens per second",
        [
            Q(
                f"sum by (model) (rate(modelsoak_generation_tokens_total{{{M}}}[{RI}]))",
                "{{model}} generated",
            ),
            Q(f"sum by (model) (rate(modelsoak_prompt_tokens_total{{{M}}}[{RI}]))", "{{model}} prompt"),
        ],
        w=6,
    )
    sequences = Panel(
        "timeseries",
        "Sequences, KV cache and batch occupancy",
        [
            Q(f"sum by (model) (modelsoak_sequences_running{{{M}}})", "{{model}} running"),
            Q(f"sum by (model) (modelsoak_sequences_waiting{{{M}}})", "{{model}} waiting"),
            Q(
                f"sum by (model) (rate(modelsoak_batch_occupancy_sum{{{M}}}[{RI}])) / "
                f"sum by (model) (rate(modelsoak_batch_occupancy_count{{{M}}}[{RI}]))",
                "{{model}} mean occupancy",
            ),
            Q(
                f"100 * sum by (model) (modelsoak_kv_cache_tokens{{{M}}}) / "
                f"sum by (model) (modelsoak_kv_cache_capacity_tokens{{{M}}} > 0)",
                "{{model}} KV cache %",
            ),
        ],
        w=6,
        description="Continuous batching: sequences decoded together, those waiting for a slot "
        "(sustained waiting means max_sequences or the KV budget is the limit), and the KV cache in use.",
    )
    return Row("Streaming models", [ttft, itl, tokens, sequences])
