"""The compiled gRPC client's cost (loadtest.native_client) against a bare
grpc.aio loop, in one run on one server: `python -m bench.native_client`.

Against the built-in `mlp` (as bench/client_cost.py's headline figure), 4 calls
in flight back to back (results taken as they come, and batched by a 10 ms
notify delay), each client in turn: requests/s, and client
CPU-seconds per 1,000 requests -- this process's CPU (time.process_time: every
thread, the C worker's included; the server is another process) over a window
after a warm-up. Both clients send the same pre-serialized request and take the
response as bytes, so what differs is the transport alone. perf_analyzer is
measured too when .tools/perf_analyzer is installed (`make tools`), for the
target: the native client's CPU per request at most twice perf_analyzer's.

Prints one JSON line; `native_client_cost()` returns the same dict (with
"goals", as bench/__main__.py's benchmarks do).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import grpc

from bench._client import METHOD, build_request
from bench._procs import ROOT, our_server
from loadtest.native_client import NativeCalls

SLOTS = 4
# How long results may wait to be taken in one wake-up in the "native_batched" run
# (the request engine forwards its results every 20 ms anyway).
BATCH_S = 0.01
WARMUP_S = 1.5


def _summary(
    requests: int, errors: dict[str, int], cpu_s: float, wall_s: float, lat_ns: list[int]
) -> dict[str, Any]:
    return {
        "requests": requests,
        "errors": errors,
        "rps": requests / wall_s,
        "cpu_s_per_1000_requests": cpu_s / max(requests, 1) * 1000,
        "p50_ms": statistics.median(lat_ns) / 1e6 if lat_ns else None,
    }


class _Window:
    """The measured window after a warm-up: `on` while it lasts; its CPU and wall seconds."""

    on = False

    async def run(self, window_s: float) -> tuple[float, float]:
        await asyncio.sleep(WARMUP_S)  # the load runs meanwhile: this is the warm-up's length
        self.on = True
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(window_s)  # the measured window's length
        c1, t1 = time.process_time(), time.perf_counter()
        self.on = False
        return c1 - c0, t1 - t0


async def _native(port: int, payload: bytes, window_s: float, notify_delay_s: float) -> dict[str, Any]:
    nc = NativeCalls(notify_delay_s)
    loop = asyncio.get_running_loop()
    window = _Window()
    lat: list[int] = []
    errors: dict[str, int] = {}

    def ready() -> None:
        # One wake-up takes every call that finished since the last one.
        for _slot, status, _tag, call_ns, _done, _details, _body in nc.results():
            if not window.on:
                continue
            if status == "OK":
                lat.append(call_ns)
            else:
                errors[status] = errors.get(status, 0) + 1

    loop.add_reader(nc.fileno(), ready)
    try:
        for slot in range(SLOTS):
            nc.open(slot, "127.0.0.1", port)
            nc.prepare(slot, METHOD, payload, 60.0)
            nc.run(slot, 0, 0)
        cpu_s, wall_s = await window.run(window_s)
        n = len(lat)
    finally:
        loop.remove_reader(nc.fileno())
        nc.free()
    return _summary(n, errors, cpu_s, wall_s, lat)


async def _aio(port: int, payload: bytes, window_s: float) -> dict[str, Any]:
    lat: list[int] = []
    errors: dict[str, int] = {}
    window = _Window()
    stop = False
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        await call(payload, timeout=60)  # connected and warm

        async def worker() -> None:
            while not stop:
                t0 = time.perf_counter_ns()
                try:
                    await call(payload, timeout=60)
                    ok, name = True, "OK"
                except grpc.aio.AioRpcError as exc:
                    ok, name = False, exc.code().name
                if window.on:
                    if ok:
                        lat.append(time.perf_counter_ns() - t0)
                    else:
                        errors[name] = errors.get(name, 0) + 1

        tasks = [asyncio.create_task(worker()) for _ in range(SLOTS)]
        cpu_s, wall_s = await window.run(window_s)
        n = len(lat)
        stop = True
        await asyncio.gather(*tasks)
    return _summary(n, errors, cpu_s, wall_s, lat)


def _perf_analyzer(port: int) -> dict[str, Any] | None:
    from bench import client_cost

    if not (client_cost.PA / "bin" / "perf_analyzer").exists():
        return None
    pa = client_cost.perf_analyzer(port, "mlp", SLOTS, "")
    return {"rps": pa["rps"], "cpu_s_per_1000_requests": pa["cpu_ms_per_request"], "p50_ms": pa["p50_ms"]}


def native_client_cost(duration: float = 10.0, with_perf_analyzer: bool = True) -> dict[str, Any]:
    """The measurement in a process of its own (`python -m bench` runs it so): grpc.aio
    in a process whose grpc has already run other clients and servers (the other
    benchmarks') was seen to hang in its poller."""
    cmd = [sys.executable, "-m", "bench.native_client", "--duration", str(duration)]
    if not with_perf_analyzer:
        cmd.append("--no-perf-analyzer")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration * 10 + 120, check=False,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"bench.native_client failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _measure(duration: float, with_perf_analyzer: bool) -> dict[str, Any]:
    payload = build_request("mlp", [1, 256])
    with our_server("--model", "mlp") as srv:
        port = int(srv["grpc"])
        native = asyncio.run(_native(port, payload, duration, 0.0))
        batched = asyncio.run(_native(port, payload, duration, BATCH_S))
        aio = asyncio.run(_aio(port, payload, duration))
        pa = _perf_analyzer(port) if with_perf_analyzer else None
    out: dict[str, Any] = {
        "setup": {
            "model": "mlp",
            "in_flight": SLOTS,
            "window_s": duration,
            "warmup_s": WARMUP_S,
            "native_batched_notify_delay_s": BATCH_S,
        },
        "native": native,
        "native_batched": batched,
        "grpc_aio": aio,
        "perf_analyzer": pa,
        "ratio_cpu_aio_vs_native": aio["cpu_s_per_1000_requests"] / native["cpu_s_per_1000_requests"],
        "ratio_cpu_aio_vs_native_batched": aio["cpu_s_per_1000_requests"]
        / batched["cpu_s_per_1000_requests"],
        "ratio_throughput_native_vs_aio": native["rps"] / aio["rps"],
        "goals": {},
    }
    if pa is not None:
        # The target: at most twice perf_analyzer's CPU per request (ratio >= 0.5).
        out["ratio_cpu_pa_vs_native"] = pa["cpu_s_per_1000_requests"] / native["cpu_s_per_1000_requests"]
        out["ratio_cpu_pa_vs_native_batched"] = (
            pa["cpu_s_per_1000_requests"] / batched["cpu_s_per_1000_requests"]
        )
        out["goals"]["ratio_cpu_pa_vs_native"] = 0.5
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per client (default 10)")
    p.add_argument("--no-perf-analyzer", action="store_true", help="skip perf_analyzer even when installed")
    args = p.parse_args()
    print(json.dumps(_measure(args.duration, not args.no_perf_analyzer)), flush=True)


if __name__ == "__main__":
    main()
