"""Dynamic batching, deadlines, the bounded queue and SIGTERM drain, on real servers
with the `sleep` built-in model (a known service time per batch)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server import breakdown
from server.proto import grpc_service_pb2 as pb
from tests.conftest import ServerProcess, infer_request
from tests.server_support import get_json, model_stats, wait_until

pytestmark = pytest.mark.slow


def _req(model: str = "sleep", value: float = 1.0) -> pb.ModelInferRequest:
    return infer_request(model, {"INPUT0": np.full((1, 4), value, np.float32)})


def test_batches_form_under_concurrency(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--model", "sleep", "--param", "sleep_ms=40", "--max-batch-size", "8",
                       "--max-queue-delay-us", "20000")  # fmt: skip
    stub = srv.stub()

    def client(i: int) -> list[int]:
        sizes = []
        for _ in range(4):
            resp = stub.ModelInfer(_req(value=float(i)))
            # each client gets its own row back, not a neighbour's
            assert np.frombuffer(resp.raw_output_contents[0], np.float32)[0] == float(i)
            parsed = breakdown.parse(resp.parameters)
            assert parsed is not None
            sizes.append(parsed["batch_size"])
        return sizes

    with ThreadPoolExecutor(16) as pool:
        sizes = [s for client_sizes in pool.map(client, range(16)) for s in client_sizes]
    assert max(sizes) > 1, sizes
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="sleep")).model_stats[0]
    assert stats.inference_count == 64
    assert stats.execution_count < 64, "the probes saw no batching"
    assert any(b.batch_size > 1 for b in stats.batch_stats)
    # every formed batch respects the max batch size
    assert all(b.batch_size <= 8 for b in stats.batch_stats)


def test_several_instances_run_side_by_side(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--model", "sleep", "--param", "sleep_ms=300", "--instances", "3",
                       "--max-batch-size", "0")  # fmt: skip
    stub = srv.stub()
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda _: stub.ModelInfer(_req()), range(3)))
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="sleep")).model_stats[0]
    assert stats.execution_count == 3
    # With one instance the third request would wait two whole 300 ms executions in
    # the queue; with three none waits for another's execution.
    queued_ms = [breakdown.parse(r.parameters)["queue"] / 1e6 for r in responses]  # type: ignore[index]
    assert max(queued_ms) < 300, queued_ms


def test_expired_request_is_dropped_from_queue(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--model", "sleep", "--param", "sleep_ms=400", "--max-batch-size", "0")
    stub = srv.stub()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(stub.ModelInfer, _req())
        # the first occupies the only instance: in flight, nothing queued behind it
        wait_until(lambda: model_stats(srv.metrics_url, "sleep"),
                   lambda m: m["in_flight"] == 1 and m["queue_depth"] == 0, 30, "request in flight")  # fmt: skip
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(_req(), timeout=0.1)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        first.result()
    # The client's deadline and the server's fire apart: wait for the server to count it.
    stats = wait_until(
        lambda: stub.ModelStatistics(pb.ModelStatisticsRequest(name="sleep")).model_stats[0],
        lambda st: st.inference_stats.fail.count >= 1, 30, "failure in the statistics",
    )  # fmt: skip
    assert stats.execution_count == 1, "the expired request was executed anyway"
    assert stats.inference_stats.fail.count == 1
    assert model_stats(srv.metrics_url, "sleep")["outcomes"].get("DEADLINE_EXCEEDED") == 1


def test_full_queue_is_refused_at_once(start_server: Callable[..., ServerProcess]) -> None:
    service_s = 1.0
    srv = start_server("--model", "sleep", "--param", f"sleep_ms={service_s * 1000:.0f}",
                       "--max-batch-size", "0", "--max-queue-size", "2")  # fmt: skip
    stub = srv.stub()
    finished: list[tuple[str, float]] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        sent = time.monotonic()
        try:
            stub.ModelInfer(_req())
            outcome = "OK"
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
            assert "queue full" in (exc.details() or "") and "max_queue_size 2" in (exc.details() or "")
            outcome = "FULL"
        with lock:
            finished.append((outcome, time.monotonic() - sent))

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(call, range(6)))
    outcomes = [o for o, _ in finished]
    assert outcomes.count("FULL") >= 1 and outcomes.count("OK") >= 2, outcomes
    # Refused at once, not queued: a request that waited for room would have waited
    # at least one whole service time, so each refusal's own round trip is shorter.
    # (Each call is timed from its own send, so a thread the OS starts late does
    # not count against the server.)
    refusals = [rtt for o, rtt in finished if o == "FULL"]
    assert all(rtt < service_s for rtt in refusals), refusals
    get_json(srv.metrics_url + "/stats")  # still serving its HTTP side
    stub.ModelInfer(_req())


def test_sigterm_drains_in_flight_requests(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--model", "sleep", "--param", "sleep_ms=1500", "--max-batch-size", "8",
                       "--max-queue-delay-us", "100000", "--grace-s", "20")  # fmt: skip
    stub = srv.stub()
    health = health_pb2_grpc.HealthStub(srv.channel())
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    with ThreadPoolExecutor(4) as pool:
        in_flight = [pool.submit(stub.ModelInfer, _req(value=float(i))) for i in range(4)]
        wait_until(lambda: model_stats(srv.metrics_url, "sleep"), lambda m: m["in_flight"] == 4, 30,
                   "4 requests in flight")  # fmt: skip
        srv.proc.send_signal(15)
        # the drain begins with NOT_SERVING, and the server refuses requests from then on
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(_req(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        results = [f.result(timeout=30) for f in in_flight]
    assert [np.frombuffer(r.raw_output_contents[0], np.float32)[0] for r in results] == [0.0, 1.0, 2.0, 3.0]
    assert srv.proc.wait(30) == 0
