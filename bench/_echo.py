"""A bare grpcio echo server: the reference the inference server is measured against.

It serves the same RPC (ModelInfer) with nothing but the work any KServe echo
must do: parse the request and return its inputs as outputs. `--raw` skips even
the parsing and returns the request bytes as they came. `--aio` serves it on
grpc.aio (one event loop, as our server), otherwise on grpcio's thread-pool
server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from server.proto import grpc_service_pb2 as pb


def _echo(request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
    resp = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
    for t in request.inputs:
        resp.outputs.add(name="OUTPUT0", datatype=t.datatype, shape=t.shape)
    resp.raw_output_contents.extend(request.raw_input_contents)
    return resp


async def _echo_async(request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
    return _echo(request, context)


async def _raw_async(request: bytes, context: Any) -> bytes:
    return request


def _handlers(raw: bool, aio: bool) -> grpc.GenericRpcHandler:
    if raw:
        handler = grpc.unary_unary_rpc_method_handler(_raw_async if aio else (lambda req, ctx: req))
    else:
        handler = grpc.unary_unary_rpc_method_handler(
            _echo_async if aio else _echo,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelInferResponse.SerializeToString,
        )
    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler})


def serve_threads(port: int, raw: bool, threads: int) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), maximum_concurrent_rpcs=threads)
    server.add_generic_rpc_handlers((_handlers(raw, aio=False),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


async def serve_aio(port: int, raw: bool, port_file: Path) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(raw, aio=True),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    port_file.write_text(json.dumps({"grpc": bound}))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", type=Path, required=True)
    p.add_argument("--raw", action="store_true")
    p.add_argument("--aio", action="store_true")
    p.add_argument("--threads", type=int, default=256)
    a = p.parse_args()
    if a.aio:
        asyncio.run(serve_aio(a.port, a.raw, a.port_file))
        return
    server, port = serve_threads(a.port, a.raw, a.threads)
    a.port_file.write_text(json.dumps({"grpc": port}))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
