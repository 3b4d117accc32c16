"""The load client every server benchmark uses: a grpc.aio process sending one
pre-serialised ModelInferRequest over and over from N concurrent tasks.

Requests go out as bytes and responses come back as bytes (no protobuf work in
the client), so two servers compared with it see the same client and the same
payload. Prints one JSON line: requests, errors, seconds, latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc
import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def build_request(model: str, shape: list[int], datatype: str = "FP32") -> bytes:
    from server import dtypes
    from server.proto import grpc_service_pb2 as pb

    dt = dtypes.lookup(datatype)
    arr = np.random.default_rng(0).standard_normal(shape).astype(dt.numpy)
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
    req.raw_input_contents.append(arr.tobytes())
    return req.SerializeToString()


async def _run(address: str, payload: bytes, concurrency: int, duration: float, warmup: float) -> dict:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(METHOD)
        await call(payload, timeout=60)  # connect and warm
        latencies: list[float] = []
        errors: dict[str, int] = {}
        start = time.perf_counter()
        measure_from = start + warmup
        end = measure_from + duration

        async def worker() -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                try:
                    await call(payload, timeout=60)
                    ok = True
                except grpc.aio.AioRpcError as exc:
                    ok = False
                    if t0 >= measure_from:
                        errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                t1 = time.perf_counter()
                if ok and t0 >= measure_from and t1 <= end:
                    latencies.append(t1 - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    lat = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": duration,
        "rps": len(latencies) / duration,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--model", default="identity")
    p.add_argument("--shape", default="1x256")
    p.add_argument("--datatype", default="FP32")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    a = p.parse_args()
    payload = build_request(a.model, [int(d) for d in a.shape.split("x")], a.datatype)
    print(json.dumps(asyncio.run(_run(a.address, payload, a.concurrency, a.duration, a.warmup))))


if __name__ == "__main__":
    main()
