"""Streamed requests on an asyncio event loop (the request engine's side of
loadtest.streaming): KServe v2 `ModelStreamInfer` over grpc.aio, and the
OpenAI-compatible API over a plain asyncio HTTP/1.1 connection reading its
server-sent events. Each returns what loadtest.streaming.StreamResult holds, as
a plain tuple (it crosses a process boundary):

    (status, details, ttft_ns, itl_ns, e2e_ns, prompt_tokens, output_tokens, from_usage, size, server_ns)

Timestamps are taken as each piece of text is read off the socket, on a loop
that does nothing else: the gevent path reads them through a thread pool."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc

from loadtest.protocols import GrpcError
from loadtest.streaming import HTTP_STATUS, StreamClock, read_kserve_response, read_openai_chunk

StreamOutcome = tuple[str, str, int, list[int], int, int, int, bool, int, dict[str, int]]

KSERVE_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def _outcome(clock: StreamClock, status: str = "OK", details: str = "") -> StreamOutcome:
    r = clock.done(*(clock.usage or (None, None)))
    if status == "OK" and not clock.pieces:
        status, details = "NO_TOKENS", "the stream ended without any text"
    return (status, details, r.ttft_ns, r.itl_ns, r.e2e_ns, r.prompt_tokens, r.output_tokens,
            clock.usage is not None, r.size, r.server_ns)  # fmt: skip


def kserve_call(channel: grpc.aio.Channel) -> Any:
    """The bidirectional ModelStreamInfer method, on raw bytes both ways."""
    return channel.stream_stream(KSERVE_STREAM, request_serializer=None, response_deserializer=None)


async def kserve_stream(method: Any, request: bytes, timeout_s: float) -> StreamOutcome:
    from server.proto import grpc_service_pb2 as pb

    clock = StreamClock()
    try:
        call = method(iter((request,)), timeout=timeout_s)
        async for raw in call:
            if read_kserve_response(pb.ModelStreamInferResponse.FromString(raw), clock):
                call.cancel()
                break
    except GrpcError as exc:  # in band
        return _outcome(clock, exc.status, str(exc).partition(": ")[2])
    except grpc.aio.AioRpcError as exc:
        return _outcome(clock, exc.code().name, exc.details() or "")
    return _outcome(clock)


async def openai_stream(host: str, port: int, path: str, body: bytes, timeout_s: float) -> StreamOutcome:
    """One POST with `stream: true` on its own connection, its SSE read line by line."""
    clock = StreamClock()
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                    f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
            writer.write(head.encode() + body)
            status_line = await reader.readline()
            code = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
            chunked = False
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                    chunked = True
            if code != 200:
                text = (await reader.read(2000)).decode(errors="replace")
                return _outcome(clock, HTTP_STATUS.get(code, f"HTTP_{code}"), f"HTTP {code}: {text[:500]}")
            async for data in _events(reader, chunked, clock):
                if data == b"[DONE]":
                    break
                read_openai_chunk(json.loads(data), clock)
    except GrpcError as exc:  # an error event in the stream
        return _outcome(clock, exc.status, str(exc).partition(": ")[2])
    except TimeoutError:
        return _outcome(clock, "DEADLINE_EXCEEDED", f"the stream did not end within {timeout_s:g} s")
    except ConnectionRefusedError as exc:
        return _outcome(clock, "UNAVAILABLE", f"connection refused: {exc}")
    except (OSError, asyncio.IncompleteReadError) as exc:
        return _outcome(clock, "UNAVAILABLE", f"connection reset mid-stream: {exc}")
    except ValueError as exc:
        return _outcome(clock, "INTERNAL", f"not a JSON event in the stream: {exc}")
    finally:
        if writer is not None:
            writer.close()
    return _outcome(
        clock,
    )


async def _events(reader: asyncio.StreamReader, chunked: bool, clock: StreamClock) -> Any:
    """The `data:` payloads of an event stream, with or without chunked framing."""
    buf = b""
    while True:
        if chunked:
            size_line = await reader.readline()
            if not size_line:
                return
            n = int(size_line.split(b";")[0].strip() or b"0", 16)
            if n == 0:
                return
            part = await reader.readexactly(n + 2)
            clock.result.size += n
            buf += part[:-2]
        else:
            part = await reader.readline()
            if not part:
                return
            clock.result.size += len(part)
            buf += part
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.startswith(b"data:"):
                yield line[5:].strip()
