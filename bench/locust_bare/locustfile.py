"""The reference the load generator is measured against: a bare Locust gRPC user.

init_gevent, one channel per user, an interceptor that fires Locust's request
event, and nothing else (no HDR histograms, no breakdown, no phases)."""

from __future__ import annotations

import contextlib
import os
import time

import grpc
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

from locust import User, constant, task  # noqa: E402

from server.proto import grpc_service_pb2 as pb  # noqa: E402
from server.proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

SHAPE = [int(d) for d in os.environ.get("BARE_SHAPE", "1x256").split("x")]


class _Events(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, environment) -> None:
        self.environment = environment

    def intercept_unary_unary(self, continuation, details, request):
        start = time.perf_counter()
        response = continuation(details, request)
        exc = response.exception()
        self.environment.events.request.fire(
            request_type="grpc",
            name=details.method,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=0,
            exception=exc,
            context={},
        )
        return response


class BareUser(User):
    wait_time = constant(0)

    def on_start(self) -> None:
        target = str(self.host).removeprefix("grpc://")
        channel = grpc.intercept_channel(grpc.insecure_channel(target), _Events(self.environment))
        self.stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="identity")
        req.inputs.add(name="INPUT0", datatype="FP32", shape=SHAPE)
        n = 1
        for d in SHAPE:
            n *= d
        req.raw_input_contents.append(b"\0" * (4 * n))
        self.request = req

    @task
    def infer(self) -> None:
        with contextlib.suppress(grpc.RpcError):  # recorded as a failure by the interceptor
            self.stub.ModelInfer(self.request, timeout=30)
