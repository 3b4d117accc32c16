"""The KServe v2 / Open Inference Protocol servicer, with Triton's extensions.

A thin adapter: `KServeCodec` turns ModelInferRequest into arrays and arrays
into ModelInferResponse; the data plane (server/dataplane.py) does the rest.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import numpy as np

from server import __version__, breakdown, dtypes, tensors
from server.admin import REPOSITORY
from server.dataplane import Decoded
from server.errors import LoadFailed, ModelNotFound, ServingError, abort, in_band
from server.kserve_stream import GenerationStreams
from server.proto import grpc_service_pb2 as pb
from server.proto import grpc_service_pb2_grpc as pb_grpc
from server.proto import model_config_pb2 as mc
from server.repository import ServedModel
from server.stats import Duration, StatsSnapshot
from server.types import TRITON_BACKENDS, ModelInfo

if TYPE_CHECKING:
    from server.core import ServerCore

log = logging.getLogger(__name__)

# Extensions of the protocol this server implements (names as Triton reports them).
EXTENSIONS = ["model_configuration", "model_repository", "statistics", "parameters"]

# grpc reports "no deadline" as a very large time remaining.
_NO_DEADLINE_S = 1e7


def timeout_of(context: grpc.aio.ServicerContext) -> float | None:
    """Seconds left before the client's deadline; None when it set none."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > _NO_DEADLINE_S else float(remaining)


class KServeCodec:
    """ModelInferRequest in, ModelInferResponse out (raw or typed, as the request)."""

    def decode(self, request: pb.ModelInferRequest, info: ModelInfo) -> Decoded:
        inputs, batch, typed = tensors.decode_inputs(request, info)
        return Decoded(inputs, batch, tensors.requested_outputs(request, info), typed, request.id)

    def encode(
        self, info: ModelInfo, decoded: Decoded, outputs: dict[str, np.ndarray]
    ) -> pb.ModelInferResponse:
        resp = pb.ModelInferResponse(model_name=info.name, model_version=info.version, id=decoded.request_id)
        tensors.encode_outputs(resp, outputs, decoded.typed)
        return resp


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: ServerCore, breakdown_in_response: bool = True) -> None:
        self.core = core
        self.plane = core.plane
        self.codec = KServeCodec()
        # Off only in bench/server.py's elimination runs, which measure its cost.
        self.breakdown_in_response = breakdown_in_response
        self.streams = GenerationStreams(self.plane, breakdown_in_response and core.plane.probes)

    # -- health and metadata ----------------------------------------------------

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            self.core.registry.get(request.name, request.version)
        except ModelNotFound as exc:
            await abort(context, exc)
        except ServingError:  # known but not loaded: a question with the answer no
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not self.plane.draining)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="modelsoak", version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = await self._model(request.name, request.version, context)
        info = model.info
        resp = pb.ModelMetadataResponse(name=info.name, versions=[info.version], platform=info.platform)
        for spec, target in ((info.inputs, resp.inputs), (info.outputs, resp.outputs)):
            for t in spec:
                target.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        return resp

    # -- inference ---------------------------------------------------------------

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        try:
            return await self._infer(request, context)
        except ServingError as exc:
            await abort(context, exc)

    async def _infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        if self.streams.is_streaming(request):
            return await self.streams.unary(request, timeout_of(context))
        result = await self.plane.infer(
            self.codec, request.model_name, request.model_version, request, timeout_of(context)
        )
        if result.timing is not None and self.breakdown_in_response:
            breakdown.fill_parameters(result.response.parameters, result.timing)
        return result.response

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async def unary(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            try:
                return pb.ModelStreamInferResponse(infer_response=await self._infer(request, context))
            except ServingError as exc:
                return pb.ModelStreamInferResponse(
                    error_message=in_band(exc),
                    infer_response=pb.ModelInferResponse(
                        model_name=request.model_name, model_version=request.model_version, id=request.id
                    ),
                )

        async for response in self.streams.stream(request_iterator, unary):
            yield response

    # -- Triton extensions ---------------------------------------------------------

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        model = await self._model(request.name, request.version, context)
        cfg = model_config(model)
        if self.core.metrics_port > 0:
            # Where this server's Prometheus metrics are (the load generator watches its
            # memory from there without --server-metrics-url): port, and scheme.
            cfg.parameters["metrics_port"].string_value = str(self.core.metrics_port)
            cfg.parameters["metrics_scheme"].string_value = "https" if self.core.metrics_tls else "http"
        return pb.ModelConfigResponse(config=cfg)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            models = [await self._model(request.name, request.version, context)]
        else:
            models = sorted(self.core.registry.loaded(), key=lambda m: (m.info.name, m.info.version))
        resp = pb.ModelStatisticsResponse()
        for m in models:
            fill_statistics(resp.model_stats.add(), m.stats.snapshot())
        return resp

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        resp = pb.RepositoryIndexResponse()
        for entry, state, reason in self.core.registry.index():
            if request.ready and state != "READY":
                continue
            resp.models.add(name=entry.name, version=entry.version, state=state, reason=reason)
        return resp

    async def _admit(self, context: grpc.aio.ServicerContext) -> None:
        """Repository control is an admin action: the mode and the token decide."""
        auth = next((str(v) for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        try:
            self.core.admin.check(REPOSITORY, auth, context.peer())
        except ServingError as exc:
            await abort(context, exc)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        await self._admit(context)
        try:
            await self.core.load_model(request.model_name)
        except ServingError as exc:
            await abort(context, exc)
        except Exception as exc:  # a model that fails to load is the caller's news, not a crash
            await abort(context, LoadFailed(f"loading '{request.model_name}' failed: {exc}"))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self._admit(context)
        try:
            await self.core.unload_model(request.model_name)
        except ServingError as exc:
            await abort(context, exc)
        return pb.RepositoryModelUnloadResponse()

    async def _model(self, name: str, version: str, context: grpc.aio.ServicerContext) -> ServedModel:
        try:
            return self.core.registry.get(name, version)
        except ServingError as exc:
            await abort(context, exc)


def model_config(model: ServedModel) -> mc.ModelConfig:
    """Triton's ModelConfig view of a served model. Dims exclude the batch
    dimension when the model batches, as Triton's do."""
    info = model.info
    cfg = mc.ModelConfig(
        name=info.name,
        platform=info.platform,
        backend=TRITON_BACKENDS.get(info.backend, info.backend),
        max_batch_size=info.max_batch_size,
    )
    skip = 1 if info.batchable else 0
    for spec in info.inputs:
        cfg.input.add(
            name=spec.name, data_type=dtypes.lookup(spec.datatype).triton_enum, dims=list(spec.shape[skip:])
        )
    for spec in info.outputs:
        cfg.output.add(
            name=spec.name, data_type=dtypes.lookup(spec.datatype).triton_enum, dims=list(spec.shape[skip:])
        )
    kind = mc.ModelInstanceGroup.KIND_GPU if info.device == "cuda" else mc.ModelInstanceGroup.KIND_CPU
    cfg.instance_group.add(name=f"{info.name}_0", count=info.instances, kind=kind)
    if model.engine is not None:  # one request, many responses: Triton's decoupled models
        cfg.model_transaction_policy.decoupled = True
    if info.batchable:
        cfg.dynamic_batching.max_queue_delay_microseconds = info.max_queue_delay_us
        cfg.dynamic_batching.default_queue_policy.max_queue_size = info.max_queue_size
    for key, value in info.parameters.items():
        cfg.parameters[key].string_value = str(value)
    cfg.parameters["sha256"].string_value = info.sha256
    cfg.parameters["device"].string_value = info.device  # the load generator's report names it
    return cfg


def _dur(target: pb.StatisticDuration, d: Duration) -> None:
    target.count = d.count
    target.ns = d.ns


def fill_statistics(out: pb.ModelStatistics, s: StatsSnapshot) -> None:
    out.name = s.model
    out.version = s.version
    out.last_inference = s.last_inference_ms
    out.inference_count = s.inference_count
    out.execution_count = s.execution_count
    st = out.inference_stats
    for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        _dur(getattr(st, name), getattr(s, name))
    for size, bs in s.batch_stats.items():
        b = out.batch_stats.add(batch_size=size)
        _dur(b.compute_input, bs.compute_input)
        _dur(b.compute_infer, bs.compute_infer)
        _dur(b.compute_output, bs.compute_output)
