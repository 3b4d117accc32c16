"""The fault suite (`make faults`, also part of `make test`): real server processes on 127.0.0.1
under the faults a user meets, asserting that nothing is lost.

Also in the suite, where they already live: a busy port (tests/test_server_ports.py) and
the profiling caps (tests/test_server_admin.py). The load generator's own faults (worker,
master or server killed mid-run) belong with the load generator's tests.
"""

from __future__ import annotations

import queue
import resource
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import psutil
import pytest

from server.proto import grpc_service_pb2 as pb
from tests.conftest import ServerProcess, infer_request
from tests.server_support import model_stats, wait_until

pytestmark = pytest.mark.faults

MiB = 1024 * 1024
X = np.ones((1, 4), np.float32)

# HTTP/2 client connection preface and an empty SETTINGS frame: what a gRPC client sends
# before its first RPC. A socket that sent them and then nothing is an idle client connection.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _rss(server: ServerProcess) -> int:
    return int(psutil.Process(server.proc.pid).memory_info().rss)


def _raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _idle_connection(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(_PREFACE)
    # The server's own SETTINGS frame: it has set up the connection's HTTP/2 transport.
    assert len(sock.recv(9)) > 0
    return sock


@pytest.mark.slow
def test_idle_connection_flood_keeps_serving_with_bounded_memory(
    start_server: Callable[..., ServerProcess],
) -> None:
    # Each connection is one fd here and one in the server (a child: it inherits the limit).
    limit = _raise_fd_limit(8192)
    n = min(3000, (limit - 200) // 2)
    srv = start_server("--model", "identity")
    stub = srv.stub()
    stub.ModelInfer(infer_request("identity", {"INPUT0": X}), timeout=10)
    before = _rss(srv)
    socks = [_idle_connection(srv.grpc_port) for _ in range(n)]
    try:
        resp = srv.stub().ModelInfer(infer_request("identity", {"INPUT0": X}), timeout=10)
        assert np.frombuffer(resp.raw_output_contents[0], np.float32).tolist() == X.ravel().tolist()
        grown = _rss(srv) - before
        # An idle HTTP/2 connection costs gRPC its transport, read buffer, HPACK tables and
        # settings: ~17 KiB (measured: +49 MiB for 3,000 connections). 32 KiB per connection
        # leaves room for allocator slack and still fails if connections grew buffers or a
        # per-connection thread (8 MiB of stack each, reserved) appeared.
        bound = n * 32 * 1024
        print(f"{n} idle connections: server RSS +{grown / MiB:.1f} MiB (bound {bound / MiB:.0f} MiB)")
        assert grown < bound, f"{n} idle connections grew the server's RSS by {grown / MiB:.1f} MiB"
    finally:
        for s in socks:
            s.close()
    assert stub.ModelInfer(infer_request("identity", {"INPUT0": X}), timeout=10).outputs


class _Tally:
    """Every request's outcome, by status name (in-band stream errors by their prefix)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: Counter[str] = Counter()

    def add(self, code: str) -> None:
        with self.lock:
            self.codes[code] += 1

    def ok(self) -> int:
        with self.lock:
            return self.codes["OK"]


def _unary_client(srv: ServerProcess, tally: _Tally, stop: threading.Event) -> None:
    stub = srv.stub()
    while not stop.is_set():
        try:
            stub.ModelInfer(infer_request("sleep", {"INPUT0": X}), timeout=30)
            tally.add("OK")
        except grpc.RpcError as exc:
            tally.add(exc.code().name)
            if srv.proc.poll() is not None:
                return


def _stream_client(srv: ServerProcess, tally: _Tally, stop: threading.Event) -> None:
    replies: queue.Queue[bool] = queue.Queue()

    def requests() -> Iterator[pb.ModelInferRequest]:
        while not stop.is_set():
            yield infer_request("sleep", {"INPUT0": X})
            if not replies.get():
                return  # the server refused in-band: end the stream, as a client does

    try:
        for resp in srv.stub().ModelStreamInfer(requests(), timeout=30):
            if resp.error_message:
                tally.add("stream:" + resp.error_message.split(":")[0])
            else:
                tally.add("OK")
            replies.put(not resp.error_message)
        tally.add("stream-end:OK")
    except grpc.RpcError as exc:
        tally.add("stream-end:" + exc.code().name)
    replies.put(False)


def test_sigterm_under_load_loses_no_request(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--model", "sleep", "--param", "sleep_ms=5", "--max-batch-size", "8", "--grace-s", "10")
    tally, stop = _Tally(), threading.Event()
    clients = [threading.Thread(target=_unary_client, args=(srv, tally, stop)) for _ in range(6)]
    clients += [threading.Thread(target=_stream_client, args=(srv, tally, stop)) for _ in range(2)]
    for t in clients:
        t.start()
    try:
        wait_until(tally.ok, lambda n: n >= 200, 60, "200 answered requests before SIGTERM")
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0, srv.log()
        # Every client sees the server gone (UNAVAILABLE) once it exited; then stop them.
        wait_until(lambda: dict(tally.codes), lambda c: c.get("UNAVAILABLE", 0) >= 6, 30, "clients see it gone")
    finally:
        stop.set()
        for t in clients:
            t.join(60)
    codes = dict(tally.codes)
    print("SIGTERM under load:", codes)
    allowed = {"OK", "UNAVAILABLE", "stream:UNAVAILABLE", "stream-end:OK", "stream-end:UNAVAILABLE"}
    assert set(codes) <= allowed, f"requests lost or failed otherwise at shutdown: {codes}"
    assert codes["OK"] >= 200 and "draining" in srv.log()


def _offer(stub: object, rate: float, duration_s: float) -> tuple[Counter[str], list[float]]:
    """Open loop: send at `rate` per second for `duration_s`, whatever the answers;
    return the outcomes and how long each rejection took (reported, not judged)."""
    futures = []
    done_at: dict[int, float] = {}
    start = time.perf_counter()
    for i in range(int(rate * duration_s)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing the open loop, not waiting for an event
        fut = stub.ModelInfer.future(infer_request("sleep", {"INPUT0": X}), timeout=30)  # type: ignore[attr-defined]
        fut.add_done_callback(lambda f, i=i: done_at.__setitem__(i, time.perf_counter()))
        futures.append((time.perf_counter(), fut))
    codes: Counter[str] = Counter()
    rejected: list[float] = []
    for i, (sent, fut) in enumerate(futures):
        exc = fut.exception()
        codes["OK" if exc is None else exc.code().name] += 1
        if exc is not None and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and i in done_at:
            rejected.append(done_at[i] - sent)
    codes["_offered_per_s"] = int(len(futures) / (time.perf_counter() - start))
    return codes, rejected


@pytest.mark.slow
def test_overload_at_10x_capacity_rejects_and_recovers(start_server: Callable[..., ServerProcess]) -> None:
    # One instance, batch 1, 10 ms per request: capacity 100 requests/s.
    srv = start_server("--model", "sleep", "--param", "sleep_ms=10", "--max-batch-size", "0",
                       "--max-queue-size", "8")  # fmt: skip
    stub = srv.stub()
    stub.ModelInfer(infer_request("sleep", {"INPUT0": X}), timeout=10)
    before = _rss(srv)
    codes, rejected = _offer(stub, rate=1000, duration_s=3)
    grown = _rss(srv) - before
    offered = codes.pop("_offered_per_s")
    print(f"overload at {offered}/s: {dict(codes)}; rejection median "
          f"{1000 * float(np.median(rejected or [0])):.2f} ms; server RSS +{grown / MiB:.1f} MiB")  # fmt: skip
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["RESOURCE_EXHAUSTED"] > codes["OK"] > 0, codes
    # A queue of 8 requests of 16 bytes each: what grows is the rejections' garbage at most.
    assert grown < 64 * MiB, f"server RSS grew {grown / MiB:.1f} MiB under overload"
    stats = model_stats(srv.metrics_url, "sleep")
    assert stats["queue_depth"] <= 8, stats
    # Recovery: within 5 s of the overload's end the queue is empty and 50 requests in a
    # row succeed (four at a time, within the queue's room): a deadline on that event.
    deadline = time.monotonic() + 5
    wait_until(lambda: model_stats(srv.metrics_url, "sleep"), lambda s: s["queue_depth"] == 0, 5, "empty queue")
    pending = [stub.ModelInfer.future(infer_request("sleep", {"INPUT0": X}), timeout=5) for _ in range(4)]
    ok = 0
    while ok < 50:
        fut = pending.pop(0)
        assert fut.exception() is None, f"after the overload: {fut.exception()}"
        ok += 1
        if ok + len(pending) < 50:
            pending.append(stub.ModelInfer.future(infer_request("sleep", {"INPUT0": X}), timeout=5))
    assert time.monotonic() < deadline, "full throughput did not come back within 5 s of the overload"
