"""The compiled gRPC client (loadtest.native_client over loadtest/native/h2call.c)
against real servers: statuses, details, bodies, deadlines, refusals, the
back-to-back loop's counts, halting, and a server killed mid-call.

Results are awaited on the client's own fd (select), never with a fixed sleep."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from loadtest import native_client
from loadtest.native_client import NativeCalls, Result
from loadtest.protocols import GrpcError, unreachable
from server.proto import grpc_service_pb2 as pb
from tests.conftest import ServerProcess, infer_request, output_array
from tests.server_support import model_stats, wait_until

INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def built() -> None:
    # `make test` installs gcc and libnghttp2-dev (make system-deps) and builds it (make native).
    lib, why = native_client.load()
    if lib is None:
        pytest.fail(why)


@pytest.fixture
def nc(built: None) -> Iterator[NativeCalls]:
    calls = NativeCalls()
    yield calls
    calls.free()


@pytest.fixture(scope="module")
def identity(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_module_server("--model", "identity")


@pytest.fixture(scope="module")
def mlp(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_module_server("--model", "mlp")


@pytest.fixture(scope="module")
def sleepy(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_module_server("--model", "sleep", "--param", "sleep_ms=300", "--max-batch-size", "1")


def more(nc: NativeCalls, timeout_s: float = 30.0) -> list[Result]:
    """The next batch of results (one or more), waiting on the client's fd."""
    end = time.monotonic() + timeout_s
    while True:
        got = nc.results()
        if got:
            return got
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no result within {timeout_s} s")
        select.select([nc.fileno()], [], [], left)


def collect(nc: NativeCalls, n: int, timeout_s: float = 30.0) -> list[Result]:
    """Exactly the next `n` results; fails on a timeout or on more than `n`."""
    out: list[Result] = []
    end = time.monotonic() + timeout_s
    while len(out) < n:
        out += more(nc, max(0.0, end - time.monotonic()))
    assert len(out) == n, f"more results than expected: {out[n:]!r}"
    return out


def at_least(nc: NativeCalls, n: int, timeout_s: float = 30.0) -> list[Result]:
    """At least `n` results (a loop running without a count may give more at once)."""
    out: list[Result] = []
    while len(out) < n:
        out += more(nc, timeout_s)
    return out


def until_tag(nc: NativeCalls, tag: int, timeout_s: float = 30.0) -> list[Result]:
    """Results up to the first with `tag` (and any that came in the same batch)."""
    out: list[Result] = []
    while tag not in [r[2] for r in out]:
        out += more(nc, timeout_s)
    return out


def setup(nc: NativeCalls, slot: int, srv: ServerProcess, msg: bytes, timeout_s: float = 30.0) -> None:
    nc.open(slot, "127.0.0.1", srv.grpc_port)
    nc.prepare(slot, INFER, msg, timeout_s)


def _request(model: str, arr: np.ndarray) -> bytes:
    return infer_request(model, {"INPUT0": arr}).SerializeToString()


def test_identity_echoes_its_input(nc: NativeCalls, identity: ServerProcess) -> None:
    arr = np.arange(64, dtype=np.float32).reshape(1, 64)
    setup(nc, 3, identity, _request("identity", arr))
    before = time.monotonic()
    nc.run(3, 11, 1)
    ((slot, status, tag, call_ns, done_s, details, body),) = collect(nc, 1)
    assert (slot, status, tag, details) == (3, "OK", 11, ""), details
    resp = pb.ModelInferResponse.FromString(body)
    assert resp.model_name == "identity" and resp.outputs[0].name == "OUTPUT0"
    np.testing.assert_array_equal(output_array(resp), arr)
    # call_ns is the call's duration; done_s is on time.monotonic()'s clock.
    assert 0 < call_ns < 30e9 and before <= done_s <= time.monotonic()


def test_mlp_answers_as_grpcio_does(nc: NativeCalls, mlp: ServerProcess) -> None:
    req = infer_request(
        "mlp", {"INPUT0": np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)}
    )
    expected = output_array(mlp.stub().ModelInfer(req, timeout=30))
    setup(nc, 0, mlp, req.SerializeToString())
    nc.run(0, 1, 1)
    ((_, status, _, _, _, details, body),) = collect(nc, 1)
    assert status == "OK", details
    got = np.asarray(output_array(pb.ModelInferResponse.FromString(body)))
    assert got.shape == (2, 10)
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-5)


def test_bad_request_carries_the_servers_message(nc: NativeCalls, mlp: ServerProcess) -> None:
    req = infer_request("mlp", {"INPUT0": np.zeros((1, 7), dtype=np.float32)})
    with pytest.raises(Exception) as info:
        mlp.stub().ModelInfer(req, timeout=30)
    setup(nc, 0, mlp, req.SerializeToString())
    nc.run(0, 2, 1)
    ((_, status, _, _, _, details, body),) = collect(nc, 1)
    assert status == "INVALID_ARGUMENT" and body == b""
    assert details == info.value.details() and "shape" in details, details  # type: ignore[attr-defined]


def test_unknown_method_is_unimplemented(nc: NativeCalls, identity: ServerProcess) -> None:
    nc.open(0, "127.0.0.1", identity.grpc_port)
    nc.prepare(0, "/inference.GRPCInferenceService/NoSuchMethod", b"", 30)
    nc.run(0, 3, 1)
    ((_, status, _, _, _, _, _),) = collect(nc, 1)
    assert status == "UNIMPLEMENTED"


def test_deadline_cancels_the_call_and_the_connection_stays(nc: NativeCalls, sleepy: ServerProcess) -> None:
    msg = _request("sleep", np.ones((1, 4), dtype=np.float32))
    setup(nc, 0, sleepy, msg, timeout_s=0.05)
    nc.run(0, 4, 1)
    ((_, status, tag, call_ns, _, details, _),) = collect(nc, 1)
    assert (status, tag, details) == ("DEADLINE_EXCEEDED", 4, "Deadline Exceeded")
    assert 0.05e9 <= call_ns < 0.29e9, call_ns  # ended by the client's clock, not the model's 300 ms
    # The next call on the same slot (the same connection) is answered.
    nc.prepare(0, INFER, msg, 30)
    nc.run(0, 5, 1)
    ((_, status, tag, call_ns, _, details, _),) = collect(nc, 1)
    assert (status, tag) == ("OK", 5), details
    assert call_ns >= 0.3e9


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_refused_connection_is_unavailable_and_stops_the_loop(nc: NativeCalls, dead_port: int) -> None:
    nc.open(0, "127.0.0.1", dead_port)
    nc.prepare(0, INFER, b"", 5)
    nc.run(0, 6, 0)  # until halted: a connection failure stops it anyway
    ((_, status, tag, _, _, details, _),) = collect(nc, 1)
    assert (status, tag) == ("UNAVAILABLE", 6)
    assert "failed to connect to all addresses; Connection refused" in details
    assert unreachable(GrpcError(status, details))
    # Nothing more of tag 6 comes: the next result is the next run's.
    nc.run(0, 7, 1)
    ((_, status, tag, _, _, _, _),) = collect(nc, 1)
    assert (status, tag) == ("UNAVAILABLE", 7)


def test_unresolvable_host_is_unavailable(nc: NativeCalls) -> None:
    nc.open(0, "no-such-host.invalid", 8001)
    nc.prepare(0, INFER, b"", 5)
    nc.run(0, 8, 1)
    ((_, status, _, _, _, details, _),) = collect(nc, 1)
    assert status == "UNAVAILABLE" and "failed to connect to all addresses" in details, details


def test_back_to_back_makes_exactly_count_calls(nc: NativeCalls, identity: ServerProcess) -> None:
    msg = _request("identity", np.ones((1, 8), dtype=np.float32))
    for slot in (0, 1):
        setup(nc, slot, identity, msg)
        nc.run(slot, 40 + slot, 50)
    got = collect(nc, 100)
    for slot in (0, 1):
        mine = [r for r in got if r[0] == slot]
        assert len(mine) == 50 and {(r[1], r[2]) for r in mine} == {("OK", 40 + slot)}
    # The loops are over: the next result on slot 0 is the next run's.
    nc.run(0, 50, 1)
    assert [r[2] for r in collect(nc, 1)] == [50]


def test_a_new_run_replaces_tag_and_count(nc: NativeCalls, identity: ServerProcess) -> None:
    setup(nc, 0, identity, _request("identity", np.ones((1, 8), dtype=np.float32)))
    nc.run(0, 1, 0)
    assert {r[2] for r in at_least(nc, 3)} == {1}
    nc.run(0, 2, 5)
    got = until_tag(nc, 2)
    # What was in flight (or finished unread) when the new run came is tag 1, then
    # exactly 5 calls tagged 2.
    got += collect(nc, 5 - sum(r[2] == 2 for r in got))
    assert [r[2] for r in got if r[2] == 2] == [2] * 5 and got[-1][2] == 2
    nc.run(0, 3, 1)
    assert [r[2] for r in collect(nc, 1)] == [3]


def test_halt_ends_the_loop_after_the_call_in_flight(nc: NativeCalls, sleepy: ServerProcess) -> None:
    setup(nc, 0, sleepy, _request("sleep", np.ones((1, 4), dtype=np.float32)))
    nc.run(0, 1, 0)
    nc.halt(0)  # reaches the worker while the first call sleeps its 300 ms
    ((_, status, tag, _, _, details, _),) = collect(nc, 1)
    assert (status, tag) == ("OK", 1), details
    # Had the loop gone on, its next call (tag 1) would have started as the first
    # ended, before this run: the next result would be tag 1, not 2.
    nc.run(0, 2, 1)
    assert [r[2] for r in collect(nc, 1)] == [2]


def test_large_response_is_not_throttled(nc: NativeCalls, identity: ServerProcess) -> None:
    arr = np.random.default_rng(2).standard_normal((1, 4 * 1024 * 1024)).astype(np.float32)  # 16 MiB
    setup(nc, 0, identity, _request("identity", arr))
    nc.run(0, 1, 1)
    ((_, status, _, _, _, details, body),) = collect(nc, 1, timeout_s=60)
    assert status == "OK", details
    np.testing.assert_array_equal(output_array(pb.ModelInferResponse.FromString(body)), arr)


def test_calls_on_an_unopened_or_unprepared_slot_fail_cleanly(
    nc: NativeCalls, identity: ServerProcess
) -> None:
    nc.run(5, 1, 1)
    ((slot, status, tag, _, _, details, _),) = collect(nc, 1)
    assert (slot, status, tag) == (5, "FAILED_PRECONDITION", 1) and "not opened" in details
    nc.open(6, "127.0.0.1", identity.grpc_port)
    nc.run(6, 2, 1)
    ((slot, status, _, _, _, details, _),) = collect(nc, 1)
    assert (slot, status) == (6, "FAILED_PRECONDITION") and "no request" in details


def test_close_cancels_the_call_in_flight(nc: NativeCalls, sleepy: ServerProcess) -> None:
    setup(nc, 0, sleepy, _request("sleep", np.ones((1, 4), dtype=np.float32)))
    nc.run(0, 1, 0)
    nc.close(0)
    ((_, status, tag, _, _, details, _),) = collect(nc, 1)
    assert (status, tag, details) == ("CANCELLED", 1, "slot closed")


@pytest.mark.slow
def test_server_killed_mid_call_then_back(
    nc: NativeCalls, start_server: Callable[..., ServerProcess]
) -> None:
    args = ("--model", "sleep", "--param", "sleep_ms=500", "--max-batch-size", "1")
    srv = start_server(*args)
    msg = _request("sleep", np.ones((1, 4), dtype=np.float32))
    setup(nc, 0, srv, msg)
    nc.run(0, 1, 1)
    assert collect(nc, 1)[0][1] == "OK"  # the connection works
    nc.run(0, 2, 0)
    wait_until(
        lambda: model_stats(srv.metrics_url, "sleep"), lambda m: m["in_flight"] == 1, 30, "call in flight"
    )
    srv.proc.kill()  # SIGKILL: no GOAWAY, the socket just closes
    ((_, status, tag, _, _, details, _),) = collect(nc, 1)
    assert (status, tag) == ("UNAVAILABLE", 2) and "socket closed" in details, details
    assert unreachable(GrpcError(status, details))
    srv.proc.wait()
    # While nothing listens: refused, and the loop that failed is over.
    nc.run(0, 3, 1)
    ((_, status, tag, _, _, details, _),) = collect(nc, 1)
    assert (status, tag) == ("UNAVAILABLE", 3) and "Connection refused" in details, details
    # The server back on the same port: the next call reconnects.
    start_server(*args, "--grpc-port", str(srv.grpc_port))
    nc.run(0, 4, 1)
    ((_, status, tag, _, _, details, _),) = collect(nc, 1)
    assert (status, tag) == ("OK", 4), details


@pytest.mark.slow
def test_connections_aged_out_by_the_server_are_replaced_between_calls(
    nc: NativeCalls, start_server: Callable[..., ServerProcess]
) -> None:
    """A server with a maximum connection age sends GOAWAY: the call in flight
    finishes, the next one goes on a new connection, none fails."""
    srv = start_server("--model", "sleep", "--param", "sleep_ms=20", "--max-batch-size", "1",
                       "--grpc-max-connection-age-s", "0.5", "--grpc-max-connection-age-grace-s", "5")  # fmt: skip
    setup(nc, 0, srv, _request("sleep", np.ones((1, 4), dtype=np.float32)))
    nc.run(0, 1, 120)  # about 2.5 s: several connection ages
    got = collect(nc, 120)
    assert {(r[1], r[5]) for r in got} == {("OK", "")}, [r for r in got if r[1] != "OK"][:3]


@pytest.mark.slow
def test_sigterm_drains_the_call_in_flight(
    nc: NativeCalls, start_server: Callable[..., ServerProcess]
) -> None:
    srv = start_server("--model", "sleep", "--param", "sleep_ms=500", "--max-batch-size", "1")
    setup(nc, 0, srv, _request("sleep", np.ones((1, 4), dtype=np.float32)))
    nc.run(0, 1, 0)
    wait_until(
        lambda: model_stats(srv.metrics_url, "sleep"), lambda m: m["in_flight"] == 1, 30, "call in flight"
    )
    srv.proc.terminate()  # graceful: GOAWAY, then the call in flight is answered
    got = more(nc)
    # Then the server refuses new calls while it drains (its own UNAVAILABLE), and
    # once gone they fail as unreachable: that ends the loop.
    while not unreachable(GrpcError(got[-1][1], got[-1][5])):
        got += more(nc)
    assert got[0][1] == "OK", got[0]
    assert {r[1] for r in got[1:]} == {"UNAVAILABLE"}, got
    nc.run(0, 2, 1)
    assert [r[2] for r in collect(nc, 1)] == [2]


def test_an_http1_port_is_unavailable(nc: NativeCalls, identity: ServerProcess) -> None:
    nc.open(0, "127.0.0.1", identity.metrics_port)  # HTTP/1.1 only
    nc.prepare(0, INFER, b"", 5)
    nc.run(0, 1, 1)
    ((_, status, _, _, _, details, _),) = collect(nc, 1)
    # It closes the connection, or answers in HTTP/1: never a working HTTP/2 connection.
    assert status == "UNAVAILABLE" and "failed to connect to all addresses" in details, details


def test_a_notify_delay_batches_wake_ups(identity: ServerProcess, built: None) -> None:
    nc = NativeCalls(notify_delay_s=0.5)
    try:
        setup(nc, 0, identity, _request("identity", np.ones((1, 8), dtype=np.float32)))
        nc.run(0, 1, 20)
        wakes = 0
        got: list[Result] = []
        while len(got) < 20:
            assert select.select([nc.fileno()], [], [], 30)[0], "no results within 30 s"
            wakes += 1
            got += nc.results()
        # 20 calls of a few milliseconds each: one or two wake-ups, not twenty.
        assert wakes <= 4 and [r[2] for r in got] == [1] * 20, wakes
    finally:
        nc.free()
