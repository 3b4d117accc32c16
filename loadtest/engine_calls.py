"""A request engine's calls (loadtest.engine): one user's connection and the
request it sends, one grpc.aio call, and the reading of a response (its size
and the server's breakdown) for the calls made here or in C
(loadtest.engine_native)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import grpc

from loadtest.protocols import MAX_MESSAGE
from server import breakdown
from server.proto import grpc_service_pb2 as pb
from server.proto import torchserve_pb2 as ts

METHODS = {
    "kserve": "/inference.GRPCInferenceService/ModelInfer",
    "torchserve": "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions",
}

def _parse_kserve(data: bytes) -> tuple[int, dict[str, int] | None]:
    resp = pb.ModelInferResponse.FromString(data)
    return len(data), breakdown.parse(resp.parameters)


def _parse_torchserve(data: bytes) -> tuple[int, dict[str, int] | None]:
    pred = ts.PredictionResponse.FromString(data).prediction
    parsed = None
    if pred[:1] == b"{":
        try:
            doc = json.loads(pred)
            parsed = breakdown.parse(doc.get("parameters") or {}) if isinstance(doc, dict) else None
        except (ValueError, TypeError):
            parsed = None
    return len(pred), parsed


PARSERS = {"kserve": _parse_kserve, "torchserve": _parse_torchserve}


class Conn:
    """One user's channel, and the request it sends."""

    def __init__(self, address: str, secure: bool, tls: Any, timeout_s: float, native: bool = False) -> None:
        opts: list[tuple[str, Any]] = [("grpc.max_receive_message_length", MAX_MESSAGE),
                                       ("grpc.max_send_message_length", MAX_MESSAGE)]  # fmt: skip
        self.native = native  # its calls are made by the native client (loadtest.engine_native)
        self.channel: Any = None  # none when native: the C client holds the connection
        if not native:
            self.channel = (grpc.aio.secure_channel(address, tls.credentials(), options=opts + tls.channel_options())
                            if secure else grpc.aio.insecure_channel(address, options=opts))  # fmt: skip
            self.channel.get_state(try_to_connect=True)  # connected before the first call
        self.timeout_s = timeout_s
        self.kind = "kserve"
        self.request = b""
        self.call: Any = None
        self.gen = 0
        self.left = 0  # calls left for `gen` (0: no limit)
        self.slot: asyncio.Task[None] | None = None
        self.halted = False
        self.mode = "closed"  # or "open": the slot takes the schedule's tickets
        self.batch = 0
        self.waiter: asyncio.Future[Any] | None = None  # an open slot waiting for a ticket

    def wake(self) -> None:
        """An open slot waiting for a ticket looks at its orders again."""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def prepare(self, kind: str, request: bytes) -> None:
        self.kind = kind
        self.request = request
        # Bytes in, bytes out: the request was serialized once by the parent.
        if self.channel is not None:
            self.call = self.channel.unary_unary(METHODS[kind])


async def call_once(conn: Conn) -> tuple[str, str, int, dict[str, int] | None, int, float]:
    """One call: status, details, response size, breakdown, the call's ns, when it ended."""
    t0 = time.perf_counter_ns()
    try:
        data = await conn.call(conn.request, timeout=conn.timeout_s)
        t1 = time.perf_counter_ns()
        size, server = PARSERS[conn.kind](data)
        return "OK", "", size, server, t1 - t0, time.monotonic()
    except grpc.RpcError as exc:
        t1 = time.perf_counter_ns()
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() or "") if hasattr(exc, "details") else str(exc)
        return code.name if code is not None else "UNKNOWN", details, 0, None, t1 - t0, time.monotonic()
    except Exception as exc:  # any failure is the call's, never the engine's
        t1 = time.perf_counter_ns()
        return "UNKNOWN", f"{type(exc).__name__}: {exc}", 0, None, t1 - t0, time.monotonic()


def parse_outcome(kind: str, status: str, details: str, body: bytes) -> tuple[str, str, int, dict[str, int] | None]:
    """A native call's status, details, response size and server breakdown."""
    if status != "OK":
        return status, details, 0, None
    try:
        size, server = PARSERS[kind](body)
    except Exception as exc:  # a response we cannot read is the call's failure, never the engine's
        return "INTERNAL", f"unreadable response: {type(exc).__name__}: {exc}", len(body), None
    return status, details, size, server
