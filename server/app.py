"""Assembling the server: models, gRPC services, metrics endpoint, lifecycle.

`InferenceServer` binds a `ServerCore` (server/core.py) to its ports: the gRPC
services (KServe v2, TorchServe, health, reflection) and the HTTP metrics port,
and runs it until SIGTERM.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.config import ServerSettings
from server.core import ServerCore
from server.kserve import InferenceServicer
from server.netutil import PortInUse, check_free, port_in_use
from server.proto import grpc_service_pb2, grpc_service_pb2_grpc, torchserve_pb2, torchserve_pb2_grpc
from server.tls import CertStore, store_from
from server.torchserve import TorchServeServicer

log = logging.getLogger("modelsoak.server")

SERVICE_NAMES = (
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    torchserve_pb2.DESCRIPTOR.services_by_name["InferenceAPIsService"].full_name,
)


@dataclass(frozen=True)
class Parts:
    """What a server is assembled from. All on in production; bench/server.py turns
    them off one by one to measure what each costs."""

    breakdown_in_response: bool = True
    health_and_reflection: bool = True


class InferenceServer:
    """The gRPC server (asyncio) and metrics endpoint around a ServerCore."""

    def __init__(
        self, settings: ServerSettings, parts: Parts | None = None, core: ServerCore | None = None
    ) -> None:
        self.settings = settings
        self.parts = parts or Parts()
        self.core = core or ServerCore(settings)
        self.health = health.aio.HealthServicer()
        self.grpc_server: grpc.aio.Server | None = None
        self.http: Any = None
        self.grpc_port = 0
        self.metrics_port = -1
        self.tls: CertStore | None = None
        self._stopped = False

    async def start(self) -> None:
        """Prepare the models, bind the ports and start serving."""
        s = self.settings
        # Refuse a taken port before minutes of model loading, not after.
        check_free(s.host, s.grpc_port, "gRPC")
        if s.metrics_port > 0:
            check_free(s.host, s.metrics_port, "metrics")
        self.tls = store_from(s.tls_cert, s.tls_key, s.tls_client_ca)  # bad files: exit 2 now
        loop = asyncio.get_running_loop()
        if self.tls is not None:
            # Certificates rotate (Kubernetes Secrets): SIGHUP reads them again at once.
            loop.add_signal_handler(signal.SIGHUP, self.tls.request_reload)
            log.info("gRPC and metrics ports: %s", self.tls.describe())
        models = await loop.run_in_executor(None, self.core.prepare_all)
        server = self._grpc_server()
        self.grpc_port = self._bind(server)
        for model in models:
            self.core.activate(model)
        await server.start()
        self.grpc_server = server
        self.core.loop = loop
        self.core.sampler.start()
        if s.metrics_port >= 0:
            from server.http import start_http

            try:
                self.http = start_http(self.core, s.host, s.metrics_port, self.tls)
            except OSError:
                await self.stop(0)  # taken since the check: close what is open, then say why
                raise
            self.metrics_port = self.http.server_port
            self.core.metrics_port, self.core.metrics_tls = self.metrics_port, self.tls is not None
        # Everything made so far (torch, onnxruntime, the models: ~230,000 objects) lives as
        # long as the server: out of the collector's sight, a full collection takes well
        # under 1 ms instead of ~90 ms, a pause every request in flight would wait out.
        gc.collect()
        gc.freeze()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if s.profile_requests:
            for model in self.core.registry.loaded():
                self.core.profiler.start(model.info.name, s.profile_requests)

    def _grpc_server(self) -> grpc.aio.Server:
        s = self.settings
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                # Never share a port: a second server on it must fail, not split the load.
                ("grpc.so_reuseport", 0),
                *grpc_limits(s),
            ],
            maximum_concurrent_rpcs=s.max_concurrent_rpcs or None,
        )
        breakdown = self.parts.breakdown_in_response
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.core, breakdown), server
        )
        torchserve_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(
            TorchServeServicer(self.core, breakdown), server
        )
        if self.parts.health_and_reflection:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health_name, reflection.SERVICE_NAME), server
            )
        return server

    def _bind(self, server: grpc.aio.Server) -> int:
        s = self.settings
        host = f"[{s.host}]" if ":" in s.host else s.host
        try:
            address = f"{host}:{s.grpc_port}"
            if self.tls is not None:
                port = server.add_secure_port(address, self.tls.grpc_credentials())
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises RuntimeError when the bind fails
            if port_in_use(s.host, s.grpc_port):
                raise PortInUse(s.host, s.grpc_port, "gRPC") from None
            raise OSError(f"could not bind gRPC to {s.host}:{s.grpc_port}: {exc}") from None
        if port == 0:
            raise OSError(f"could not bind gRPC to {s.host}:{s.grpc_port}")
        return int(port)

    async def _set_health(self, status: int) -> None:
        if self.parts.health_and_reflection:
            for name in ("", *SERVICE_NAMES):
                await self.health.set(name, status)

    async def stop(self, grace_s: float | None = None, close_grpc: bool = True) -> None:
        """Drain: NOT_SERVING, refuse new requests, let in-flight ones finish.

        close_grpc=False (SIGTERM in the CLI, which then exits the process) leaves
        the gRPC server open: gRPC's own shutdown cancels the calls it has received
        but not yet handed to us, and their clients see CANCELLED, which retry
        policies do not retry. Once the process exits, every call still open ends
        with its connection, and its client sees UNAVAILABLE."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grace_s if grace_s is None else grace_s
        end = time.monotonic() + grace
        # Refuse first, then say so: whoever sees NOT_SERVING finds requests refused.
        self.core.plane.draining = True
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        models = self.core.registry.loaded()
        for m in models:
            m.close()
        for m in models:
            if not await m.drain(max(0.0, end - time.monotonic())):
                log.warning("model %s: requests still running when the grace period ended", m.info.name)
        if self.grpc_server is not None and close_grpc:
            await self.grpc_server.stop(max(0.0, end - time.monotonic()))
        elif self.grpc_server is not None:
            # The answers of the last requests drained are being written by gRPC now.
            await asyncio.sleep(min(0.2, max(0.0, end - time.monotonic())))
        if self.http is not None:
            self.http.shutdown()
        self.core.sampler.stop()
        self.core.profiler.finish_all()
        for m in models:
            m.shutdown()


def _ms(seconds: float) -> int:
    # gRPC reads 0 ms as "at once"; the settings' 0 means "never" (INT_MAX ms).
    return int(seconds * 1000) if seconds > 0 else 2**31 - 1


def grpc_limits(s: ServerSettings) -> list[tuple[str, int]]:
    """The per-connection limits the gRPC server enforces (docs/reference/server.md, Security)."""
    return [
        ("grpc.max_concurrent_streams", s.grpc_max_concurrent_streams),
        ("grpc.max_connection_idle_ms", _ms(s.grpc_max_connection_idle_s)),
        ("grpc.max_connection_age_ms", _ms(s.grpc_max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", _ms(s.grpc_max_connection_age_grace_s)),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", _ms(s.grpc_keepalive_min_ping_s)),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(s.grpc_keepalive_min_ping_s)),
        ("grpc.keepalive_permit_without_calls", int(s.grpc_keepalive_permit_without_calls)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_metadata_size", s.grpc_max_metadata_bytes),
    ]


def describe_ports(server: InferenceServer) -> str:
    models = ", ".join(f"{i.name}:{i.version}" for i in server.core.model_infos())
    return (
        f"modelsoak server listening: grpc={server.settings.host}:{server.grpc_port} "
        f"metrics={server.settings.host}:{server.metrics_port} models={models} device={server.core.device}"
    )
