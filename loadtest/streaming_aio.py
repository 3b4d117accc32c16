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
import socket
import struct
import time
from collections import deque
from typing import Any

import grpc

from loadtest.protocols import GrpcError
from loadtest.streaming import HTTP_STATUS, StreamClock, read_kserve_response, read_openai_chunk

StreamOutcome = tuple[str, str, int, list[int], int, int, int, bool, int, dict[str, int], list[int]]

KSERVE_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def _outcome(clock: StreamClock, status: str = "OK", details: str = "") -> StreamOutcome:
    prompt_tokens, output_tokens = clock.usage or (None, None)
    r = clock.done(prompt_tokens, output_tokens, at=clock.end)
    if status == "OK" and not clock.pieces:
        status, details = "NO_TOKENS", "the stream ended without any text"
    return (status, details, r.ttft_ns, r.itl_ns, r.e2e_ns, r.prompt_tokens, r.output_tokens,
            clock.usage is not None, r.size, r.server_ns, r.itl_added_ns)  # fmt: skip


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


# Linux's SO_TIMESTAMPNS (and SCM_TIMESTAMPNS): each read carries the kernel's time
# of receipt of its (last) packet, in CLOCK_REALTIME (the socket module has no name for it).
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("qq")


class _HttpConn:
    """One kept-alive HTTP/1.1 connection, read with the kernel's receive times.

    A token's time is when its bytes reached the socket (SO_TIMESTAMPNS), not when
    this loop got round to reading them: with hundreds of streams on one loop, a
    read waits for the callbacks before it, and a timestamp taken then would carry
    that wait into every gap. Where the kernel gives no time, the read's is used."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock, self.loop = sock, loop
        self.chunks: deque[tuple[int, bytes]] = deque()
        self.closed = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.stamped = True
        except OSError:
            self.stamped = False
        loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    async def connect(cls, host: str, port: int) -> _HttpConn:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        error: OSError = ConnectionRefusedError(f"no address for {host}")
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            # a request is one small write: no Nagle wait for the server's delayed ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return cls(sock, loop)
        raise error

    def _readable(self) -> None:
        try:
            data, anc, _, _ = self.sock.recvmsg(262144, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.error = exc
            self._lost()
            return
        if not data:
            self._lost()
            return
        at = 0
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= _TIMESPEC.size:
                sec, nsec = _TIMESPEC.unpack_from(raw)
                # the kernel's CLOCK_REALTIME on the run's clock (perf_counter's CLOCK_MONOTONIC)
                at = sec * 1_000_000_000 + nsec - (time.time_ns() - time.perf_counter_ns())
        self.chunks.append((at or time.perf_counter_ns(), data))
        self._wake()

    def _lost(self) -> None:
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def write(self, data: bytes) -> None:
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            await self.loop.sock_sendall(self.sock, data[sent:])

    async def next(self) -> tuple[int, bytes] | None:
        """The next bytes read and when; None once the server closed the connection."""
        while not self.chunks:
            if self.closed:
                return None
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.chunks.popleft()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
        if self.sock.fileno() >= 0:
            self.sock.close()


class HttpPool:
    """Kept-alive connections to one HTTP server, one stream on each at a time, as
    an OpenAI client's connection pool keeps them: a stream's clock starts at its
    send, not at a connect."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[_HttpConn] = []

    async def take(self) -> tuple[_HttpConn, bool]:
        """A connection, and whether it served a request before."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and not conn.chunks:
                return conn, True
            conn.close()
        return await _HttpConn.connect(self.host, self.port), False

    def give(self, conn: _HttpConn) -> None:
        if conn.closed:
            conn.close()
        else:
            self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class _Closed(Exception):
    """The server closed the connection; `heard`: after it had started answering."""

    def __init__(self, heard: bool) -> None:
        super().__init__("the server closed the connection")
        self.heard = heard


class _Body:
    """A response body as it arrives: chunked, of a Content-Length, or to the close."""

    def __init__(self, chunked: bool, length: int | None) -> None:
        self.chunked, self.left = chunked, length
        self.buf = b""
        self.size_left = 0  # data bytes left in the current chunk
        self.state = "size"  # chunked: size, data, crlf, trailers
        self.done = length == 0

    def feed(self, data: bytes) -> bytes:
        """The body's bytes in `data` (framing removed); sets `done` at its end."""
        if not self.chunked:
            if self.left is None:
                return data
            part = data[: self.left]
            self.left -= len(part)
            self.done = self.left == 0
            return part
        self.buf += data
        out = []
        while not self.done:
            if self.state == "data":
                part = self.buf[: self.size_left]
                out.append(part)
                self.buf = self.buf[len(part) :]
                self.size_left -= len(part)
                if self.size_left:
                    break
                self.state = "crlf"
            elif self.state == "crlf":
                if len(self.buf) < 2:
                    break
                self.buf = self.buf[2:]
                self.state = "size"
            else:
                line, found, rest = self.buf.partition(b"\r\n")
                if not found:
                    break
                self.buf = rest
                if self.state == "trailers":
                    self.done = not line
                    continue
                size = int(line.split(b";")[0].strip() or b"0", 16)  # ValueError: not chunked framing
                if size == 0:
                    self.state = "trailers"
                else:
                    self.state, self.size_left = "data", size
        return b"".join(out)


async def _read_head(conn: _HttpConn) -> tuple[int, dict[bytes, bytes], int, bytes]:
    """The status, headers, when the head was read and the bytes after it."""
    buf = b""
    while True:
        item = await conn.next()
        if item is None:
            raise _Closed(bool(buf))
        at, data = item
        buf += data
        head, found, rest = buf.partition(b"\r\n\r\n")
        if found:
            break
    lines = head.split(b"\r\n")
    parts = lines[0].split()
    code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return code, headers, at, rest


async def _read_stream(conn: _HttpConn, clock: StreamClock) -> tuple[int, str, bool]:
    """One response on `conn`: (HTTP status, error text, whether the connection can
    be used again). A 200's events are marked on `clock` at the time they were read."""
    code, headers, at, rest = await _read_head(conn)
    chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
    length = None if chunked or b"content-length" not in headers else int(headers[b"content-length"])
    body = _Body(chunked, length)
    reusable = (chunked or length is not None) and headers.get(b"connection", b"").lower() != b"close"
    text = b""
    lines = b""
    ended = False
    data: bytes | None = rest
    while True:
        if data:
            clock.result.size += len(data)
            part = body.feed(data)
            if code != 200:
                text = (text + part)[:2000]
            else:
                lines += part
                while not ended and b"\n" in lines:
                    line, _, lines = lines.partition(b"\n")
                    if not line.startswith(b"data:"):
                        continue  # blank separators, comments, event names
                    event = line[5:].strip()
                    if event == b"[DONE]":
                        ended = True
                        clock.end = at
                    else:
                        read_openai_chunk(json.loads(event), clock, at)
        if body.done:
            break
        item = await conn.next()
        if item is None:
            if length is None and not chunked:
                break  # a body to the close
            raise _Closed(True)
        at, data = item
    if code == 200 and not ended:
        clock.end = at
    return code, text.decode(errors="replace"), reusable


async def openai_stream(pool: HttpPool, path: str, body: bytes, timeout_s: float) -> StreamOutcome:
    """One POST with `stream: true` on a kept-alive connection of `pool`, its
    server-sent events read as they arrive. The clock starts at the send."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {pool.host}:{pool.port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    clock = StreamClock()
    conn: _HttpConn | None = None
    try:
        async with asyncio.timeout(timeout_s):
            for attempt in (0, 1):
                conn, reused = await pool.take()
                clock = StreamClock()
                await conn.write(head + body)
                try:
                    code, text, reusable = await _read_stream(conn, clock)
                except _Closed as exc:
                    conn.close()
                    if reused and not exc.heard and attempt == 0:
                        continue  # a kept-alive connection the server had closed: once more on a new one
                    raise
                break
        assert conn is not None
        finished, conn = conn, None
        if reusable:
            pool.give(finished)
        else:
            finished.close()
        if code != 200:
            return _outcome(clock, HTTP_STATUS.get(code, f"HTTP_{code}"), f"HTTP {code}: {text[:500]}")
    except GrpcError as exc:  # an error event in the stream
        return _outcome(clock, exc.status, str(exc).partition(": ")[2])
    except TimeoutError:
        return _outcome(clock, "DEADLINE_EXCEEDED", f"the stream did not end within {timeout_s:g} s")
    except ConnectionRefusedError as exc:
        return _outcome(clock, "UNAVAILABLE", f"connection refused: {exc}")
    except _Closed as exc:
        return _outcome(clock, "UNAVAILABLE", f"connection reset mid-stream: {exc}")
    except OSError as exc:
        return _outcome(clock, "UNAVAILABLE", f"connection failed: {exc}")
    except ValueError as exc:
        return _outcome(clock, "INTERNAL", f"not a JSON event in the stream: {exc}")
    finally:
        if conn is not None:
            conn.close()
    return _outcome(clock)
