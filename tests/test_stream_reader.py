"""The request engine's reader of OpenAI-compatible streams (loadtest.streaming_aio):
kept-alive connections, the kernel's receive times, HTTP framing and failures,
against a small HTTP/1.1 server written here whose timing each test sets."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from loadtest import streaming_aio
from loadtest.streaming_aio import HttpPool, openai_stream

BODY = json.dumps({"model": "m", "prompt": "x", "stream": True}).encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(text: str, sent_ns: int | None = None) -> bytes:
    doc: dict[str, Any] = {"choices": [{"index": 0, "text": text}]}
    if sent_ns is not None:
        doc["modelsoak_sent_ns"] = sent_ns
    return _chunk(b"data: " + json.dumps(doc).encode() + b"\n\n")


class Server:
    """Answers each POST by its path (see `_answer`); counts connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = int(next(v for k, _, v in (line.partition(b":") for line in head.split(b"\r\n"))
                                  if k.lower() == b"content-length"))  # fmt: skip
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                path = head.split()[1].decode()
                if not self._answer(conn, path):
                    return

    def _answer(self, conn: socket.socket, path: str) -> bool:
        """False: the connection closes after this answer."""
        ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        if path in ("/v1/completions", "/close-after"):
            conn.sendall(ok + _event(" a", 1_000_000) + _event(" b", 3_000_000) + _chunk(b"data: [DONE]\n\n")
                         + b"0\r\n\r\n")  # fmt: skip
            return path != "/close-after"  # then closed while idle, as a server's keep-alive timeout does
        if path == "/late":
            # The first token 20 ms after the request, the second 300 ms after it: these
            # sleeps are the server's timing the test measures, not waits for an event.
            t0 = time.monotonic()
            conn.sendall(ok)
            time.sleep(0.02)
            conn.sendall(_event(" a"))
            time.sleep(max(0.0, 0.3 - (time.monotonic() - t0)))
            conn.sendall(_event(" b") + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            return True
        if path == "/busy":
            body = json.dumps({"error": {"message": "queue full"}}).encode()
            conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            return True
        if path == "/die":
            conn.sendall(ok + _event(" a"))
            return False
        raise AssertionError(path)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_streams_share_a_kept_alive_connection(server: Server) -> None:
    async def go() -> list[Any]:
        pool = HttpPool("127.0.0.1", server.port)
        out = [await openai_stream(pool, "/v1/completions", BODY, 10) for _ in range(3)]
        pool.close()
        return out

    outcomes = _run(go())
    assert [o[0] for o in outcomes] == ["OK"] * 3, outcomes
    assert server.accepted == 1
    _, _, ttft, itl, e2e, _, output, from_usage, size, _, added = outcomes[0]
    assert ttft > 0 and len(itl) == 1 and e2e >= ttft and output == 2 and not from_usage and size > 0
    # The server's stamps are 2 ms apart: what the way added to the gap is |gap - 2 ms|.
    assert added == [max(1, abs(itl[0] - 2_000_000))]


def test_a_connection_the_server_closed_while_idle_is_replaced(server: Server) -> None:
    async def go() -> list[Any]:
        pool = HttpPool("127.0.0.1", server.port)
        first = await openai_stream(pool, "/close-after", BODY, 10)
        # The server closed it after answering; the pool may still hold it.
        second = await openai_stream(pool, "/v1/completions", BODY, 10)
        pool.close()
        return [first, second]

    outcomes = _run(go())
    assert [o[0] for o in outcomes] == ["OK", "OK"], outcomes
    assert server.accepted == 2


def test_token_times_are_the_kernels_not_the_loops(server: Server) -> None:
    # The loop is blocked from 5 to 155 ms after the send; the first token arrives at
    # 20 ms and the second at 300 ms. Timed when the loop reads them, the first would
    # come at ~155 ms and the gap be ~145 ms; timed as the kernel received them, 20 and 280.
    async def go() -> Any:
        pool = HttpPool("127.0.0.1", server.port)
        await openai_stream(pool, "/v1/completions", BODY, 10)  # connected before the clock starts
        loop = asyncio.get_running_loop()
        loop.call_later(0.005, time.sleep, 0.15)  # the stall under test: the loop blocked, not a wait
        out = await openai_stream(pool, "/late", BODY, 10)
        pool.close()
        return out

    status, _, ttft, itl, *_ = _run(go())
    assert status == "OK"
    assert ttft < 100_000_000, ttft
    assert len(itl) == 1 and itl[0] > 200_000_000, itl


def test_an_error_status_names_it_and_keeps_the_connection(server: Server) -> None:
    async def go() -> list[Any]:
        pool = HttpPool("127.0.0.1", server.port)
        out = [await openai_stream(pool, "/busy", BODY, 10), await openai_stream(pool, "/v1/completions", BODY, 10)]
        pool.close()
        return out

    busy, ok = _run(go())
    assert busy[0] == "RESOURCE_EXHAUSTED" and "HTTP 429" in busy[1] and "queue full" in busy[1], busy
    assert ok[0] == "OK" and server.accepted == 1


def test_a_stream_cut_short_is_unavailable(server: Server) -> None:
    async def go() -> Any:
        pool = HttpPool("127.0.0.1", server.port)
        return await openai_stream(pool, "/die", BODY, 10)

    status, details, ttft, *_ = _run(go())
    assert status == "UNAVAILABLE" and "mid-stream" in details and ttft > 0, details


def test_a_refused_connection_is_unavailable() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    status, details, *_ = _run(openai_stream(HttpPool("127.0.0.1", port), "/v1/completions", BODY, 5))
    assert status == "UNAVAILABLE" and "refused" in details, details


def test_kernel_receive_times_are_on(server: Server) -> None:
    async def go() -> bool:
        conn = await streaming_aio._HttpConn.connect("127.0.0.1", server.port)
        stamped = conn.stamped
        conn.close()
        return stamped

    assert _run(go()) is True
