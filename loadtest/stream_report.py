"""The report's streaming section: per phase, time to first token, inter-token
latency and time per output token (p50 / p99 of the merged histograms), output
tokens/s and goodput under the plan's limits; where the token counts came from;
and the server's own queue / prefill / decode split where it reports one."""

from __future__ import annotations

from loadtest import trust
from loadtest.results import Latency, Streaming, Summary

__all__ = ["streaming_lines"]


def _ms(lat: Latency | None, key: str) -> str:
    if lat is None:
        return "n/a"
    shown = trust.shown(lat, key)
    if shown:
        return shown
    v = lat.at(key)
    return "n/a" if v is None else f"{v:.2f}"


_SOURCES = {
    "usage": "the server's own usage counts",
    "counted": "counted here, one piece of text per token (the server reported no usage)",
    "mixed": "the server's usage where it reported it, else counted here",
}


def _limits(st: Streaming) -> str:
    if not st.good_limits_ms:
        return "no goodput limits in the plan (streaming.ttft_ms / tpot_ms / e2e_ms): every successful stream counts"
    return "a good stream: " + ", ".join(
        f"{k[:-3].upper()} <= {v:g} ms" for k, v in st.good_limits_ms.items()
    )


def streaming_lines(s: Summary) -> list[str]:
    rows = [(ph.name, ph.streaming) for ph in s.phases if ph.streaming is not None]
    total = s.totals.streaming
    if total is None:
        return []
    lines = [
        "## Streaming",
        "",
        "| Phase | Streams | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | TPOT p50 ms | TPOT p99 ms "
        "| Output tokens/s | Goodput/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, st in [*rows, ("all", total)]:
        lines.append(
            f"| {name} | {st.streams} | {_ms(st.ttft_ms, 'p50')} | {_ms(st.ttft_ms, 'p99')} | "
            f"{_ms(st.itl_ms, 'p50')} | {_ms(st.itl_ms, 'p99')} | {_ms(st.tpot_ms, 'p50')} | "
            f"{_ms(st.tpot_ms, 'p99')} | {st.output_tokens_per_s:.1f} | {st.goodput_rps:.2f} |"
        )
    mean_out = total.output_tokens / total.streams if total.streams else 0.0
    mean_in = total.prompt_tokens / total.streams if total.streams else 0.0
    lines += [
        "",
        f"- Tokens: {total.prompt_tokens} in (mean {mean_in:.1f} per prompt), {total.output_tokens} out "
        f"(mean {mean_out:.1f} per stream); counts from {_SOURCES.get(total.tokens_source, total.tokens_source)}",
        f"- Goodput: {total.good_streams} of {total.streams} streams; {_limits(total)}",
    ]
    split = total.server_split_ms
    if split:
        client = total.ttft_ms.mean if total.ttft_ms else None
        outside = f"; the client saw {client:.2f} ms to the first token" if client is not None else ""
        lines.append(
            f"- The server's split (means): queue {split.get('queue', 0):.2f} ms, prefill {split.get('prefill', 0):.2f} ms, "
            f"first token after {split.get('ttft', 0):.2f} ms{outside}; decode {split.get('decode', 0):.1f} ms"
        )
    added = total.itl_added_ms
    if added is not None:
        lines.append(
            f"- Inter-token gaps as read against the server's own (it stamps each token's send): "
            f"they differ by {added.p50:.3f} ms at p50, {added.p99:.3f} ms at p99 (max {added.max:.3f} ms): "
            "what the network and this client added; the rest of the ITL spread is the server's"
        )
    return [*lines, ""]
