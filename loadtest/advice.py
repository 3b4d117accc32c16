"""The diagnosis of a run: what limited it, found by the evidence in a fixed
order, each statement citing the numbers it rests on, and the suggestions whose
premise was measured (never "add workers" when the generator was not
saturated, never "network" when the time went to waiting for a send slot).

The order of evidence:
1. offered against delivered rate (open loop): did the target keep up?
2. queue growth over the run (the time series): is a queue building up?
3. the server's own phases (our server reports them): where its time goes;
4. the load generator itself: CPU and open-loop schedule lag;
5. the client's remainder: waiting for a send slot, transport.

The headline is the first of these that explains the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loadtest.results import Summary

if TYPE_CHECKING:
    from loadtest.series import Point

# A share of a request's time this large names the bottleneck.
DOMINANT = 0.5
# Queueing this large a share of the client's time: the server is saturated.
QUEUE_SATURATED = 0.3
# Transport (the call less the server's own time) this large a share: look at the network.
TRANSPORT_LARGE = 0.3
# Latency this many times higher at the end of a phase than at its start: a queue builds up.
GROWTH_FACTOR = 2.0
GROWTH_MIN_MS = 5.0


@dataclass
class Finding:
    """One statement of the analysis, with its supporting items."""

    text: str
    items: list[str] = field(default_factory=list)


@dataclass
class Diagnosis:
    headline: str
    findings: list[Finding]
    suggestions: list[str]


def _ms(x: float) -> str:
    return f"{x:.3g} ms" if x < 100 else f"{x:,.0f} ms"


def _server_parts(s: Summary) -> dict[str, float]:
    """The server's mean time per request by part (ms), protocol work the remainder."""
    m = s.server_breakdown.mean_ms
    parts = {
        "queue": m.get("queue", 0.0),
        "data movement in (batch assembly, host to device)": m.get("batch_assembly", 0.0) + m.get("h2d", 0.0),
        "compute": m.get("compute", 0.0),
        "data movement out (device to host)": m.get("d2h", 0.0),
    }
    parts["server protocol work (decode, encode)"] = max(m.get("total", 0.0) - sum(parts.values()), 0.0)
    return parts


def _client_parts(s: Summary) -> dict[str, float] | None:
    """A request's mean time as the client saw it, by part (ms): the server's parts,
    the wait for a send slot, transport. None without the server's breakdown."""
    bd = s.server_breakdown
    if not bd.available or bd.client_mean_ms <= 0:
        return None
    parts = _server_parts(s)
    if s.generator.openloop.scheduled:
        parts["waiting for a send slot (open loop: scheduled until sent)"] = bd.send_wait_ms
    parts["transport (network, serialisation, client)"] = bd.transport_ms
    return parts


def _generator_limit(s: Summary) -> str:
    """What shows the generator limited the run ("" when nothing does)."""
    v = s.provenance.plan["validity"]
    busy = [(w, c) for w, c in s.generator.workers.items() if c.saturated_fraction > v["max_saturated_fraction"]]
    if busy:
        w, c = max(busy, key=lambda wc: wc[1].saturated_fraction)
        return (f"load generator saturated: {w} at >= {v['max_cpu_percent']:g} % CPU for "
                f"{c.saturated_fraction:.0%} of the run")  # fmt: skip
    judged = any("short of CPU" in r for r in s.generator.invalid_reasons)  # enough ticks to judge
    lagged = [(w, c) for w, c in s.generator.workers.items()
              if judged and c.loop_lagged_fraction > v.get("max_lagged_fraction", 0.25)]  # fmt: skip
    if lagged:
        w, c = max(lagged, key=lambda wc: wc[1].loop_lagged_fraction)
        return (f"load generator short of CPU: {c.loop_lagged_fraction:.0%} of {w}'s event-loop ticks woke late "
                f"(worst {c.loop_lag_max_ms:.0f} ms) at {c.cpu_mean:.0f} % CPU")  # fmt: skip
    ol = s.generator.openloop
    if ol.scheduled and ol.late_fraction > v["max_late_fraction"]:
        return (f"load generator behind its schedule: {ol.late_fraction:.1%} of sends late, "
                f"worst {ol.max_behind_ms:.0f} ms")  # fmt: skip
    return ""


def _main_points(s: Summary, series: list[Point]) -> tuple[str, list[Point]]:
    """The longest measured phase and its series points."""
    phases = [p for p in s.phases if p.kind != "warmup" and p.requests]
    if not phases or not series:
        return "", []
    main = max(phases, key=lambda p: p.ended_s - p.started_s)
    return main.name, [p for p in series if p.phase == main.name and p.p50_ms is not None and p.count]


def _growth(s: Summary, series: list[Point]) -> tuple[Finding, str] | None:
    """The main phase's median latency early and late; the headline when it grew."""
    name, pts = _main_points(s, series)
    if len(pts) < 6:
        return None
    third = len(pts) // 3
    first = sorted(p.p50_ms or 0.0 for p in pts[:third])[third // 2]
    last = sorted(p.p50_ms or 0.0 for p in pts[-third:])[third // 2]
    grows = last > GROWTH_FACTOR * first and last - first > GROWTH_MIN_MS
    what = f"the median went from {_ms(first)} in the first third of {name} to {_ms(last)} in its last"
    finding = Finding(f"Latency over the run: {what} ({len(pts)} points): "
                      + ("a queue is building up." if grows else "no queue building up."))  # fmt: skip
    return finding, (f"queue building up: {what}" if grows else "")


def diagnose(s: Summary, series: list[Point] | None = None) -> Diagnosis:
    findings: list[Finding] = []
    headline = ""
    generator = _generator_limit(s)
    ol = s.generator.openloop
    need = s.provenance.plan["errors"]["min_sustained_ratio"]
    # 1. Offered against delivered.
    if ol.scheduled and ol.offered_rps > 0:
        short = ol.sustained_rps < need * ol.offered_rps
        rates = f"{ol.sustained_rps:.0f}/s of {ol.offered_rps:.0f}/s offered"
        tail = f" ({ol.dropped} sends dropped, {ol.unfinished} unfinished at the stop)" if short else ""
        if short and generator:
            headline = f"{generator}: it delivered {rates}"
        elif short:
            headline = f"server saturated: {rates}"
        findings.append(Finding(f"Offered against delivered: {rates}{tail}; "
                                f"{'short of' if short else 'within'} the {need:.0%} the plan asks for."))  # fmt: skip
    # 2. Queue growth over time.
    grow = _growth(s, series or [])
    if grow is not None:
        findings.append(grow[0])
    # 3. The server's own phases.
    bd = s.server_breakdown
    client = _client_parts(s)
    if client is None:
        findings.append(Finding(f"Server-side breakdown not available: {bd.reason or 'no breakdown in the responses'}."))  # fmt: skip
    else:
        total = bd.client_mean_ms
        f = Finding(f"Mean client latency {_ms(total)}, of which (share of the client's time):")
        f.items = [f"{k}: {_ms(v)} ({v / total:.1%})" for k, v in sorted(client.items(), key=lambda kv: -kv[1])]
        if generator:
            f.items.append("the client's parts include the load generator's own delays (see below)")
        findings.append(f)
        queue = client["queue"] / total
        if not headline and queue > QUEUE_SATURATED and not generator:
            users = max((p.users for p in s.phases), default=0)
            headline = (f"server saturated: requests wait {_ms(client['queue'])} in its queue "
                        f"({queue:.0%} of their time) at {users} users")  # fmt: skip
    bs = [p.server_breakdown for p in s.phases if p.server_breakdown is not None]
    if bs:
        mean_batch = sum(b.mean_batch_size for b in bs) / len(bs)
        findings.append(Finding(f"Batches the server formed: {mean_batch:.1f} samples on average."))
    # 4. The generator itself.
    if s.generator.workers:
        worst = max(s.generator.workers.items(), key=lambda wc: wc[1].cpu_max)
        lag = f", open-loop schedule lag at most {ol.max_behind_ms:.0f} ms" if ol.scheduled else ""
        state = generator or "not a limit"
        findings.append(Finding(f"Load generator: CPU at most {worst[1].cpu_max:.0f} % ({worst[0]}, mean "
                                f"{worst[1].cpu_mean:.0f} %){lag}: {state}."))  # fmt: skip
    if not headline and generator:
        headline = generator
    if not headline and grow is not None and grow[1]:
        headline = grow[1]
    # 5. Otherwise the largest part of a request's time names it.
    if not headline and client is not None:
        top = max(client, key=lambda k: client[k])
        short_name = top.split(" (")[0]
        headline = f"{short_name}: {client[top] / bd.client_mean_ms:.0%} of a request's time ({_ms(client[top])} of {_ms(bd.client_mean_ms)})"  # fmt: skip
    mem = s.memory
    if mem.available and mem.leak is not None:
        slope = mem.leak.slope_bytes_per_hour
        growth = "n/a" if slope is None else f"{slope / 2**20:+.2f} MiB/h"
        findings.append(Finding(f"Server memory ({mem.source}): peak {mem.peak_bytes / 2**20:.1f} MiB, "
                                f"trend {growth} — {mem.leak.reason}."))  # fmt: skip
    else:
        findings.append(Finding(f"Server memory not measured: {mem.reason or 'n/a'}."))
    return Diagnosis(headline or "no bottleneck stands out in what was measured", findings,
                     _suggestions(s, headline, generator, client))  # fmt: skip


def _suggestions(s: Summary, headline: str, generator: str, client: dict[str, float] | None) -> list[str]:
    out: list[str] = []
    total = s.server_breakdown.client_mean_ms
    share = {k.split(" (")[0]: v / total for k, v in (client or {}).items()} if total > 0 else {}
    device = (s.provenance.server or {}).get("device", "")
    fp32 = any(i.datatype == "FP32" for i in s.provenance.target.inputs)
    if headline.startswith("server saturated"):
        out.append(
            f"The server is the limit at this load ({headline.split(': ', 1)[1]}): add model instances, raise "
            "max_batch_size, scale out replicas, or find the rate it sustains (--scenario capacity)."
        )
    moves = share.get("data movement in", 0.0) + share.get("data movement out", 0.0)
    if moves > 0.2:
        out.append(
            f"Data movement takes {moves:.0%} of a request's time: use pinned host memory and overlapped "
            "copies, keep pre/post-processing on the device, or send smaller dtypes (FP16/INT8)."
        )
    compute = share.get("compute", 0.0)
    if compute > DOMINANT:
        if device == "cuda" and fp32:
            out.append(f"Compute dominates ({compute:.0%}) in FP32 on a GPU: try mixed precision (FP16/BF16 "
                       "autocast) or a TensorRT / ONNX Runtime TensorRT build.")  # fmt: skip
        elif device not in ("cuda", "gpu"):
            out.append(f"Compute dominates ({compute:.0%}) on a CPU: consider a GPU, INT8 quantisation (ONNX "
                       "Runtime dynamic quantisation), or graph optimisation.")  # fmt: skip
        else:
            out.append(f"Compute dominates ({compute:.0%}): consider quantisation or a smaller model.")
    transport = share.get("transport", 0.0)
    # A generator short of CPU is slow to send and to read answers: the call time
    # then holds its own delays, and is no premise for the network.
    if transport > TRANSPORT_LARGE and not generator:
        out.append(
            f"Transport takes {transport:.0%} of a request's time (the call less the server's own time): send "
            "raw tensor contents, batch on the client, or co-locate client and server."
        )
    wait = share.get("waiting for a send slot", 0.0)
    if wait > QUEUE_SATURATED and not headline.startswith("server saturated") and not generator:
        out.append(
            f"Sends waited {wait:.0%} of their time for a free user while the server kept up: raise the "
            "users (-u), the open loop's in-flight slots."
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
    if generator:
        out.append(
            f"Add load-generator workers (locust --processes / more worker pods): {generator}, so the "
            "generator, not the server, limited this run."
        )
    if not out:
        out.append("Nothing measured here stands out: the run met its targets without a dominant bottleneck.")
    return out


def bottlenecks(s: Summary, series: list[Point] | None = None) -> list[Finding]:
    return diagnose(s, series).findings


def suggestions(s: Summary, series: list[Point] | None = None) -> list[str]:
    return diagnose(s, series).suggestions
