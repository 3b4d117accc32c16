"""The gRPC server's per-connection limits, seen on the wire by a raw HTTP/2 client:
the SETTINGS it announces, GOAWAY for an idle connection and for a client that pings
too often, and metadata over the size limit refused."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator

import grpc
import pytest

from server.app import grpc_limits
from server.config import ServerSettings
from server.proto import grpc_service_pb2 as pb
from tests.conftest import ServerProcess

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, GOAWAY = 0x4, 0x6, 0x7
MAX_CONCURRENT_STREAMS = 0x3
ENHANCE_YOUR_CALM = 0xB


def _frame(kind: int, flags: int = 0, payload: bytes = b"", stream: int = 0) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _frames(sock: socket.socket) -> Iterator[tuple[int, int, bytes]]:
    """(type, flags, payload) of each frame the server sends, until it closes."""
    buf = b""
    while True:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                return
            buf += chunk
        length = int.from_bytes(buf[:3], "big")
        yield buf[3], buf[4], buf[9 : 9 + length]
        buf = buf[9 + length :]


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(PREFACE + _frame(SETTINGS))
    return sock


def _goaway(sock: socket.socket) -> tuple[int, bytes]:
    """The error code and debug text of the first GOAWAY the server sends (acking its
    SETTINGS meanwhile)."""
    for kind, flags, payload in _frames(sock):
        if kind == SETTINGS and not flags & 1:
            sock.sendall(_frame(SETTINGS, flags=1))
        if kind == GOAWAY:
            return int.from_bytes(payload[4:8], "big"), payload[8:]
    raise AssertionError("the server closed the connection without a GOAWAY")


@pytest.fixture(scope="module")
def server(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_module_server("--model", "identity", "--grpc-max-concurrent-streams", "64")


def test_settings_map_onto_grpc_options() -> None:
    opts = dict(grpc_limits(ServerSettings.model_validate({"grpc_max_connection_age_s": 0})))
    assert opts["grpc.max_concurrent_streams"] == 4096
    assert opts["grpc.max_connection_idle_ms"] == 300_000
    assert opts["grpc.max_connection_age_ms"] == 2**31 - 1  # 0 in the settings: never
    assert opts["grpc.http2.min_recv_ping_interval_without_data_ms"] == 10_000
    assert opts["grpc.keepalive_permit_without_calls"] == 1
    assert opts["grpc.max_metadata_size"] == 16 * 1024


def test_server_announces_its_stream_limit(server: ServerProcess) -> None:
    with _connect(server.grpc_port) as sock:
        kind, _, payload = next(_frames(sock))
    assert kind == SETTINGS
    settings = {int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(payload[i + 2 : i + 6], "big")
                for i in range(0, len(payload), 6)}  # fmt: skip
    assert settings[MAX_CONCURRENT_STREAMS] == 64, settings


def test_a_client_pinging_too_often_is_sent_away(server: ServerProcess) -> None:
    with _connect(server.grpc_port) as sock:
        for i in range(6):  # far faster than one ping per 10 s
            sock.sendall(_frame(PING, payload=struct.pack(">Q", i)))
        assert _goaway(sock)[0] == ENHANCE_YOUR_CALM
    assert server.stub().ServerLive(pb.ServerLiveRequest(), timeout=10).live


def test_metadata_over_the_limit_is_refused(server: ServerProcess) -> None:
    stub = server.stub()
    with pytest.raises(grpc.RpcError) as err:
        # Over gRPC's hard limit (1.25 x the 16 KiB soft one, between which it refuses at random).
        stub.ServerLive(pb.ServerLiveRequest(), metadata=(("x-big", "a" * 24_000),), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    assert "metadata size exceeds" in (err.value.details() or "")
    assert stub.ServerLive(pb.ServerLiveRequest(), metadata=(("x-small", "a" * 1000),), timeout=10).live


def test_an_idle_connection_is_closed(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--model", "identity", "--grpc-max-connection-idle-s", "1")
    with _connect(srv.grpc_port) as sock:
        # gRPC closes it with GOAWAY, which clients answer by reconnecting when next needed.
        assert b"connection idle" in _goaway(sock)[1]
