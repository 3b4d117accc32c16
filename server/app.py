"""Assembling the server: models, gRPC services, metrics endpoint, lifecycle.

`ServerCore` holds the state every protocol reads (registry, readiness, memory
sampler, profiler) and is the API the exporters use without touching gRPC.
`InferenceServer` binds it to ports and runs it until SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from exporters.server_metrics import LeakCache
from server.backends import prepare_model
from server.config import ServerSettings
from server.errors import ShuttingDown
from server.kserve import InferenceServicer
from server.memory import MemorySampler
from server.profiling import ProfileManager
from server.proto import grpc_service_pb2, grpc_service_pb2_grpc, torchserve_pb2, torchserve_pb2_grpc
from server.repository import ModelEntry, ModelRegistry, ServedModel, parse_tensor_spec, resolve
from server.scheduler import Scheduler
from server.stats import ModelStats
from server.torchserve import TorchServeServicer
from server.types import ModelInfo

log = logging.getLogger("modelsoak.server")

SERVICE_NAMES = (
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    torchserve_pb2.DESCRIPTOR.services_by_name["InferenceAPIsService"].full_name,
)


class ServerCore:
    """Models and state shared by the protocols, the exporters and the CLI."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.device = settings.resolved_device()
        self.registry = ModelRegistry()
        self.sampler = MemorySampler(interval_s=settings.memory_interval_s)
        self.profiler = ProfileManager(self, settings.profile_dir)
        self.leaks = LeakCache(self)
        self.started_at = time.time()
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._load_lock = asyncio.Lock()

    # -- models ---------------------------------------------------------------

    def entries_from_settings(self) -> list[ModelEntry]:
        s = self.settings
        defaults: dict[str, Any] = {
            "backend": s.backend,
            "device": self.device,
            "max_batch_size": s.max_batch_size,
            "max_queue_delay_us": s.max_queue_delay_us,
            "max_queue_size": s.max_queue_size,
            "instances": s.instances,
            "params": s.params,
            "inputs": [parse_tensor_spec(t) for t in s.inputs] or None,
            "outputs": [parse_tensor_spec(t) for t in s.outputs] or None,
        }
        return resolve(s.model, defaults)

    def prepare_all(self) -> list[ServedModel]:
        """Prepare every model of the repository (blocking; schedulers not started)."""
        entries = self.entries_from_settings()
        self.registry.add_catalog(entries)
        return [self._prepare_entry(entry) for entry in entries]

    def _prepare_entry(self, entry: ModelEntry) -> ServedModel:
        t0 = time.perf_counter()
        try:
            prepared = prepare_model(entry, self.settings.cache_dir)
            instances = [prepared.create_instance(i) for i in range(entry.instances)]
        except Exception as exc:
            self.registry.mark_failed(entry, str(exc))
            raise
        info = ModelInfo(
            name=entry.name,
            version=entry.version,
            platform=prepared.platform,
            backend=prepared.backend,
            device=prepared.device,
            inputs=list(prepared.inputs),
            outputs=list(prepared.outputs),
            max_batch_size=prepared.max_batch_size,
            instances=entry.instances,
            max_queue_delay_us=entry.max_queue_delay_us,
            max_queue_size=entry.max_queue_size,
            sha256=prepared.sha256,
            source=prepared.source,
            description=prepared.description,
            parameters=dict(prepared.parameters),
        )
        stats = ModelStats(info.name, info.version)
        scheduler = Scheduler(info, instances, stats, self.settings.probes, self.settings.execution)
        log.info(
            "prepared model %s version %s (%s on %s, %d instance(s), max batch %d) in %.1f s",
            info.name, info.version, info.backend, info.device, info.instances,
            info.max_batch_size, time.perf_counter() - t0,
        )  # fmt: skip
        return ServedModel(info, scheduler, stats, entry)

    def activate(self, model: ServedModel) -> None:
        """Start the model's workers on the running loop and serve it."""
        model.scheduler.start()
        self.registry.put(model)

    async def load_model(self, name: str) -> None:
        """Load (or reload) every version of `name` from the repository."""
        loop = asyncio.get_running_loop()
        async with self._load_lock:
            for entry in self.registry.entries(name):
                fresh = await loop.run_in_executor(None, self._prepare_entry, entry)
                old = self.registry.remove(entry.name, entry.version)
                self.activate(fresh)
                if old is not None:
                    await self._retire(old)

    async def unload_model(self, name: str) -> None:
        async with self._load_lock:
            for entry in self.registry.entries(name):
                old = self.registry.remove(entry.name, entry.version)
                self.registry.mark_failed(entry, "unloaded")
                if old is not None:
                    await self._retire(old)

    async def _retire(self, model: ServedModel) -> None:
        model.scheduler.close()
        await model.scheduler.drain(self.settings.grace_s)
        model.scheduler.shutdown_threads()
        for inst in model.scheduler.instances:
            inst.close()

    def model_for_inference(self, name: str, version: str) -> ServedModel:
        if self.draining:
            raise ShuttingDown("the server is shutting down and takes no new requests")
        return self.registry.get(name, version)

    def ready(self) -> bool:
        return not self.draining and bool(self.registry.loaded())

    def model_infos(self) -> list[ModelInfo]:
        return [m.info for m in self.registry.loaded()]


class InferenceServer:
    """The gRPC server (asyncio) and metrics endpoint around a ServerCore."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.core = ServerCore(settings)
        self.health = health.aio.HealthServicer()
        self.grpc_server: grpc.aio.Server | None = None
        self.http: Any = None
        self.grpc_port = 0
        self.metrics_port = -1
        self._stopped = False

    async def start(self) -> None:
        """Prepare the models, bind the ports and start serving."""
        s = self.settings
        loop = asyncio.get_running_loop()
        models = await loop.run_in_executor(None, self.core.prepare_all)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=s.max_concurrent_rpcs or None,
        )
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.core), server)
        torchserve_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(TorchServeServicer(self.core), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection((*SERVICE_NAMES, health_name, reflection.SERVICE_NAME), server)
        host = f"[{s.host}]" if ":" in s.host else s.host
        self.grpc_port = server.add_insecure_port(f"{host}:{s.grpc_port}")
        if self.grpc_port == 0:
            raise OSError(f"could not bind gRPC to {s.host}:{s.grpc_port}")
        for model in models:
            self.core.activate(model)
        await server.start()
        self.grpc_server = server
        self.core.loop = loop
        self.core.sampler.start()
        if s.metrics_port >= 0:
            from server.http import start_http

            self.http = start_http(self.core, s.host, s.metrics_port)
            self.metrics_port = self.http.server_port
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.profile_requests:
            for model in self.core.registry.loaded():
                self.core.profiler.start(model.info.name, s.profile_requests)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new requests, let in-flight ones finish."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grace_s if grace_s is None else grace_s
        end = time.monotonic() + grace
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.core.draining = True
        models = self.core.registry.loaded()
        for m in models:
            m.scheduler.close()
        for m in models:
            if not await m.scheduler.drain(max(0.0, end - time.monotonic())):
                log.warning("model %s: requests still running when the grace period ended", m.info.name)
        if self.grpc_server is not None:
            await self.grpc_server.stop(max(0.0, end - time.monotonic()))
        if self.http is not None:
            self.http.shutdown()
        self.core.sampler.stop()
        self.core.profiler.finish_all()
        for m in models:
            m.scheduler.shutdown_threads()
            for inst in m.scheduler.instances:
                inst.close()


def describe_ports(server: InferenceServer) -> str:
    models = ", ".join(f"{i.name}:{i.version}" for i in server.core.model_infos())
    return (
        f"modelsoak server listening: grpc={server.settings.host}:{server.grpc_port} "
        f"metrics={server.settings.host}:{server.metrics_port} models={models} device={server.core.device}"
    )
