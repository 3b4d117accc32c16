"""Bottleneck analysis and optimisation suggestions, each following from a number
the run measured (and saying which)."""

from __future__ import annotations

from loadtest.results import Summary


def _shares(s: Summary) -> dict[str, float] | None:
    bd = s.server_breakdown
    if not bd.available:
        return None
    m = bd.mean_ms
    client = bd.client_mean_ms
    if client <= 0:
        return None
    parts = {
        "queue": m.get("queue", 0.0),
        "data movement in (batch assembly, host to device)": m.get("batch_assembly", 0.0) + m.get("h2d", 0.0),
        "compute": m.get("compute", 0.0),
        "data movement out (device to host)": m.get("d2h", 0.0),
        "outside the server (network, serialisation, client)": bd.outside_server_ms,
    }
    other = max(m.get("total", 0.0) - sum(v for k, v in parts.items() if not k.startswith("outside")), 0.0)
    parts["server protocol work (decode, encode)"] = other
    return {k: v / client for k, v in parts.items()}


def bottlenecks(s: Summary) -> list[str]:
    out = []
    shares = _shares(s)
    bd = s.server_breakdown
    if shares is None:
        out.append(f"Server-side breakdown not available: {bd.reason or 'no breakdown in the responses'}.")
    else:
        client = bd.client_mean_ms
        out.append(f"Mean client latency {client:.3f} ms, of which (share of the client's time):")
        for k, v in sorted(shares.items(), key=lambda kv: -kv[1]):
            out.append(f"  {k}: {v:.1%}")
        top = max(shares, key=lambda k: shares[k])
        out.append(f"The largest share is {top}.")
    mem = s.memory
    if mem.available and mem.leak is not None:
        slope = mem.leak.slope_bytes_per_hour
        growth = "n/a" if slope is None else f"{slope / 2**20:+.2f} MiB/h"
        out.append(
            f"Server memory ({mem.source}): peak {mem.peak_bytes / 2**20:.1f} MiB, "
            f"trend {growth} — {mem.leak.reason}."
        )
    else:
        out.append(f"Server memory not measured: {mem.reason or 'n/a'}.")
    bs = [p.server_breakdown for p in s.phases if p.server_breakdown is not None]
    if bs:
        mean_batch = sum(b.mean_batch_size for b in bs) / len(bs)
        out.append(f"Batches the server formed: {mean_batch:.1f} samples on average.")
    return out


def suggestions(s: Summary) -> list[str]:
    out: list[str] = []
    shares = _shares(s) or {}
    device = (s.provenance.server or {}).get("device", "")
    fp32 = any(i.datatype == "FP32" for i in s.provenance.target.inputs)
    if shares.get("queue", 0) > 0.3:
        out.append(
            f"Requests spend {shares['queue']:.0%} of their time queued: the server is saturated at this "
            "load — add model instances, raise max_batch_size, or scale out replicas."
        )
    moves = shares.get("data movement in (batch assembly, host to device)", 0) + shares.get(
        "data movement out (device to host)", 0
    )
    if moves > 0.2:
        out.append(
            f"Data movement takes {moves:.0%}: use pinned host memory and overlapped copies, keep "
            "pre/post-processing on the device, or send smaller dtypes (FP16/INT8)."
        )
    if shares.get("compute", 0) > 0.5:
        if device == "cuda" and fp32:
            out.append(
                f"Compute dominates ({shares['compute']:.0%}) in FP32 on a GPU: try mixed precision "
                "(FP16/BF16 autocast) or a TensorRT / ONNX Runtime TensorRT build."
            )
        elif device != "cuda":
            out.append(
                f"Compute dominates ({shares['compute']:.0%}) on a CPU: consider a GPU, INT8 "
                "quantisation (ONNX Runtime dynamic quantisation), or graph optimisation."
            )
        else:
            out.append(
                f"Compute dominates ({shares['compute']:.0%}): consider quantisation or a smaller model."
            )
    if shares.get("outside the server (network, serialisation, client)", 0) > 0.3:
        out.append(
            "Much of the latency is outside the server: send raw tensor contents, batch on the client, "
            "co-locate client and server, or look at the input pipeline that feeds the requests."
        )
    tp = [p for p in s.phases if p.kind == "throughput" and p.samples_per_s]
    if len(tp) > 1 and tp[-1].samples_per_s > 1.5 * tp[0].samples_per_s:
        out.append(
            f"Throughput grows with batch size ({tp[0].samples_per_s:.0f}/s at {tp[0].batch_size} "
            f"to {tp[-1].samples_per_s:.0f}/s at {tp[-1].batch_size}): batch requests, or let the "
            "server's dynamic batcher wait longer (max_queue_delay)."
        )
    mem = s.memory
    if mem.available and mem.leak is not None and mem.leak.suspected:
        out.append(
            "Memory grows steadily: look for caches without bounds or tensors kept across requests "
            "(the profile endpoint records allocations per request)."
        )
    limit = s.provenance.plan["memory"]["max_peak_bytes"]
    if mem.available and mem.peak_bytes > 0.8 * limit:
        out.append(
            f"Peak memory is {mem.peak_bytes / limit:.0%} of the limit: lower the batch size or "
            "use reduced precision."
        )
    if not s.generator.valid:
        out.append(
            "Add load-generator workers (locust --processes / more worker pods): the generator, not the "
            "server, limited this run."
        )
    if not out:
        out.append("Nothing measured here stands out: the run met its targets without a dominant bottleneck.")
    return out
