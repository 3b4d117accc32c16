"""How many concurrent token streams the server holds, and how true stream-sleep's timing stays.

    python -m bench.stream_server --transport grpc --streams 500 --itl-ms 10
    python -m bench.stream_server --transport http --streams 500 --itl-ms 10

Starts `python -m server --model stream-sleep` with the given timing, opens every
stream at once from one asyncio client process (gRPC: one ModelStreamInfer call
per stream on one channel; HTTP: one connection per stream to /v1/completions
with stream: true), and prints JSON: streams finished, tokens, and the measured
TTFT and inter-token latency percentiles next to the configured ones. The client
shares the machine with the server, so on a small host the numbers say what the
pair sustains, an upper bound on the server's own error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from server.proto import grpc_service_pb2 as pb
from server.proto import grpc_service_pb2_grpc as pb_grpc
from server.tensors import encode_bytes_elements


def _start_server(args: argparse.Namespace, workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    port_file = workdir / "ports.json"
    cmd = [sys.executable, "-m", "server", "--model", "stream-sleep", "--grpc-port", "0", "--metrics-port", "0",
           "--port-file", str(port_file), "--param", f"ttft_ms={args.ttft_ms}", "--param", f"itl_ms={args.itl_ms}",
           "--param", f"max_tokens={args.tokens}", "--param", f"max_waiting={args.streams}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    return proc, json.loads(port_file.read_text())


async def _grpc_stream(stub: Any, start: asyncio.Event) -> list[float]:
    req = pb.ModelInferRequest(model_name="stream-sleep")
    req.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    req.raw_input_contents.append(encode_bytes_elements(np.array([b"hello"], dtype=object)))
    await start.wait()
    times = [time.perf_counter()]
    async for resp in stub.ModelStreamInfer(iter([req])):
        if resp.error_message:
            raise RuntimeError(resp.error_message)
        times.append(time.perf_counter())
        if resp.infer_response.parameters["triton_final_response"].bool_param:
            break
    return times


async def _http_stream(port: int, start: asyncio.Event) -> list[float]:
    body = json.dumps({"model": "stream-sleep", "prompt": "hello", "stream": True}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await start.wait()
    times = [time.perf_counter()]
    writer.write(head + body)
    while line := await reader.readline():
        if line.startswith(b"data: [DONE]"):
            break
        if line.startswith(b"data: ") and b'"finish_reason": null' in line:
            times.append(time.perf_counter())
    writer.close()
    return times


async def _run(args: argparse.Namespace, ports: dict[str, int]) -> list[list[float] | BaseException]:
    start = asyncio.Event()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}")
    await channel.channel_ready()
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    warm = asyncio.Event()
    warm.set()
    await _grpc_stream(stub, warm)  # the server's first stream pays its one-off costs
    if args.transport == "grpc":
        tasks = [asyncio.ensure_future(_grpc_stream(stub, start)) for _ in range(args.streams)]
    else:
        tasks = [asyncio.ensure_future(_http_stream(ports["metrics"], start)) for _ in range(args.streams)]
    await asyncio.sleep(1.0)  # every connection open before the first request goes
    start.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await channel.close()
    return list(results)


def _summary(args: argparse.Namespace, results: list[list[float] | BaseException]) -> dict[str, Any]:
    done = [r for r in results if isinstance(r, list) and len(r) == args.tokens + 1]
    errors = [repr(r)[:200] for r in results if isinstance(r, BaseException)][:3]
    ttft = np.array([r[1] - r[0] for r in done]) * 1e3
    itl = np.concatenate([np.diff(r[1:]) for r in done]) * 1e3 if done else np.array([0.0])
    # Steady state: the gaps after every stream has had its first token (the start
    # burst of hundreds of RPCs or connections at once is over).
    settled = max((r[1] for r in done), default=0.0)
    steady = [np.diff([t for t in r[1:] if t >= settled]) for r in done]
    itl_steady = np.concatenate(steady) * 1e3 if steady else np.array([])

    def pct(a: np.ndarray) -> dict[str, float]:
        return {f"p{q}": round(float(np.percentile(a, q)), 3) for q in (50, 90, 99)} if a.size else {}

    return {
        "transport": args.transport, "streams": args.streams, "finished": len(done), "errors": errors,
        "configured_ms": {"ttft": args.ttft_ms, "itl": args.itl_ms, "tokens": args.tokens},
        "ttft_ms": pct(ttft), "itl_ms": pct(itl), "itl_ms_steady": pct(itl_steady),
        "itl_steady_p99_minus_configured_ms": round(float(np.percentile(itl_steady, 99)) - args.itl_ms, 3)
        if itl_steady.size else None,
        "ttft_p50_error": round(float(np.median(ttft)) / args.ttft_ms - 1, 4) if done else None,
        "itl_p50_error": round(float(np.median(itl)) / args.itl_ms - 1, 4) if done else None,
        "itl_p99_minus_configured_ms": round(float(np.percentile(itl, 99)) - args.itl_ms, 3) if done else None,
        "cpus": os.cpu_count(),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--transport", choices=("grpc", "http"), default="grpc")
    p.add_argument("--streams", type=int, default=500)
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--tokens", type=int, default=50)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        proc, ports = _start_server(args, Path(tmp))
        try:
            results = asyncio.run(_run(args, ports))
        finally:
            proc.terminate()
            proc.wait(30)
    print(json.dumps(_summary(args, results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
