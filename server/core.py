"""The server's state, free of any transport: models, data plane, memory, profiles.

`ServerCore` holds what every protocol reads (registry, data plane, readiness,
memory sampler, leak verdicts, profiler) and is the API the metrics and the
transports use; server/app.py binds it to ports.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any

from server.admin import AdminGate
from server.backends import prepare_model
from server.builtin_stream import STREAMING_MODELS
from server.config import ServerSettings
from server.dataplane import DataPlane
from server.generation import STREAM_INPUTS, STREAM_OUTPUTS, NoTensors
from server.leak import LeakCache
from server.memory import MemorySampler
from server.profiling import ProfileLimits, ProfileManager
from server.repository import ModelEntry, ModelRegistry, ServedModel, parse_tensor_spec, resolve
from server.scheduler import Scheduler
from server.stats import ModelStats
from server.types import PLATFORM_GENERATIVE, ModelInfo

log = logging.getLogger("modelsoak.server")


class ServerCore:
    """Models and state shared by the protocols, the metrics and the CLI."""

    # The per-model queue and batcher; a benchmark may substitute its own.
    scheduler_class: type[Scheduler] = Scheduler

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.device = settings.resolved_device()
        self.registry = ModelRegistry()
        self.plane = DataPlane(self.registry, settings.probes)
        self.sampler = MemorySampler(interval_s=settings.memory_interval_s)
        self.profiler = ProfileManager(self.registry, settings.profile_dir, ProfileLimits.of(settings))
        self.admin = AdminGate(settings)
        self.leaks = LeakCache(self.sampler, settings.leak_warmup_s)
        self.started_at = time.time()
        # The HTTP port serving /metrics once bound (-1: none), and whether it
        # speaks TLS: the model config advertises them to the load generator.
        self.metrics_port = -1
        self.metrics_tls = False
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
        return resolve(s.model, defaults, s.cache_dir)

    def prepare_all(self) -> list[ServedModel]:
        """Prepare every model of the repository (blocking; schedulers not started)."""
        entries = self.entries_from_settings()
        self.registry.add_catalog(entries)
        return [self._prepare_entry(entry) for entry in entries]

    def _prepare_entry(self, entry: ModelEntry) -> ServedModel:
        if entry.source in STREAMING_MODELS:
            return self._prepare_streaming(entry)
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
        scheduler = self.scheduler_class(
            info, instances, stats, self.settings.probes, self.settings.execution
        )
        log.info(
            "prepared model %s version %s (%s on %s, %d instance(s), max batch %d) in %.1f s",
            info.name, info.version, info.backend, info.device, info.instances,
            info.max_batch_size, time.perf_counter() - t0,
        )  # fmt: skip
        return ServedModel(info, scheduler, stats, entry)

    def _prepare_streaming(self, entry: ModelEntry) -> ServedModel:
        """A streaming built-in: a generation engine (on CPU), and a scheduler that
        serves no tensors (the data plane sends its requests to the engine)."""
        definition = STREAMING_MODELS[entry.source]
        try:
            params = definition.resolve(entry.params)
            engine = definition.make(entry.name, params)
        except Exception as exc:
            self.registry.mark_failed(entry, str(exc))
            raise
        key = json.dumps({"source": entry.source, "params": params}, sort_keys=True).encode()
        info = ModelInfo(
            name=entry.name, version=entry.version, platform=PLATFORM_GENERATIVE, backend="generative",
            device="cpu", inputs=list(STREAM_INPUTS), outputs=list(STREAM_OUTPUTS), max_batch_size=0,
            instances=1, max_queue_delay_us=0, max_queue_size=engine.max_waiting,
            sha256=hashlib.sha256(key).hexdigest(), source=entry.source,
            description=definition.description, parameters=dict(params),
        )  # fmt: skip
        stats = ModelStats(info.name, info.version)
        scheduler = Scheduler(info, [NoTensors(entry.name)], stats, self.settings.probes)
        log.info("prepared streaming model %s version %s (%s)", info.name, info.version, entry.source)
        return ServedModel(info, scheduler, stats, entry, engine)

    def activate(self, model: ServedModel) -> None:
        """Start the model's workers on the running loop and serve it."""
        model.start()
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
        model.close()
        await model.drain(self.settings.grace_s)
        model.shutdown()

    @property
    def draining(self) -> bool:
        return self.plane.draining

    def ready(self) -> bool:
        return not self.plane.draining and bool(self.registry.loaded())

    def model_infos(self) -> list[ModelInfo]:
        return [m.info for m in self.registry.loaded()]
