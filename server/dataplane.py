"""The data plane: one inference request, from model lookup to result and timing.

Every transport (KServe v2 gRPC, TorchServe gRPC) is a codec over this: it
decodes its wire message into arrays once it knows the model (`Codec.decode`),
and encodes the outputs into its own response (`Codec.encode`). Everything in
between is here, once: refuse while draining, find the model, run it through
its scheduler, time the whole request, and count the outcome in the model's
statistics. Errors are `ServingError`s; the transport maps them to its status
codes through server/errors.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import numpy as np

from server.errors import InvalidInput, ServingError, ShuttingDown, status_name
from server.generation import Event, FinishEvent, Generation, GenerationEngine, GenerationRequest, Sink
from server.stats import RequestTiming
from server.types import ModelInfo

if TYPE_CHECKING:
    from server.repository import ModelRegistry, ServedModel

RequestT = TypeVar("RequestT", contravariant=True)
ResponseT = TypeVar("ResponseT")
ResponseT_co = TypeVar("ResponseT_co", covariant=True)


@dataclass(slots=True)
class Decoded:
    """A request's inputs as arrays, checked against the model's specs."""

    inputs: dict[str, np.ndarray]
    # Samples in the request (1 for a model that does not batch).
    batch: int
    # Output names to return, all known to the model.
    outputs: Sequence[str]
    # Whether the request used typed contents (KServe responses mirror that).
    typed: bool = False
    # The request id to echo back.
    request_id: str = ""


class Codec(Protocol[RequestT, ResponseT_co]):
    """A transport's wire format: request message in, response message out."""

    def decode(self, request: RequestT, info: ModelInfo) -> Decoded:
        """Validate and decode; raise InvalidInput naming what is wrong."""
        ...

    def encode(self, info: ModelInfo, decoded: Decoded, outputs: dict[str, np.ndarray]) -> ResponseT_co:
        """The response for `outputs` (before the timing breakdown is added)."""
        ...


@dataclass(slots=True)
class Result(Generic[ResponseT]):
    """An encoded response, and its server-side timing (None without probes)."""

    response: ResponseT
    timing: RequestTiming | None


class DataPlane:
    """Finds models and runs requests through their schedulers."""

    def __init__(self, registry: ModelRegistry, probes: bool = True) -> None:
        self.registry = registry
        self.probes = probes
        self.draining = False

    def model(self, name: str, version: str = "") -> ServedModel:
        """The served model for an inference request (refused while draining)."""
        if self.draining:
            raise ShuttingDown("the server is shutting down and takes no new requests")
        return self.registry.get(name, version)

    async def generate(
        self, name: str, version: str, parse: Callable[[GenerationEngine], GenerationRequest], sink: Sink
    ) -> tuple[ServedModel, Generation]:
        """Start a generation on a streaming model (on the loop): `parse` reads the
        transport's request with the engine's defaults; events go to `sink`, on the
        loop. Errors before the first token raise here; later ones arrive as a
        FinishEvent with reason "error"."""
        model = self.model(name, version)
        engine = model.engine
        if engine is None:
            raise InvalidInput(
                f"model '{model.info.name}' is not a streaming model; send it ModelInfer requests"
            )
        stats, probes = model.stats, self.probes

        def counted(event: Event) -> None:
            if probes and isinstance(event, FinishEvent):
                if event.error is not None:
                    err = event.error if isinstance(event.error, ServingError) else ServingError(str(event.error))
                    stats.record_failure(status_name(err), event.total_ns)
                elif event.reason != "cancelled":
                    timing = RequestTiming(queue_ns=event.queue_ns, compute_ns=event.total_ns - event.queue_ns,
                                           total_ns=event.total_ns, batch_size=1, batch_requests=1)  # fmt: skip
                    stats.record_success(timing, 1)
            sink(event)

        start = time.perf_counter_ns()
        try:
            return model, engine.submit(parse(engine), counted)
        except ServingError as exc:
            if probes:
                stats.record_failure(status_name(exc), time.perf_counter_ns() - start)
            raise

    async def infer(
        self,
        codec: Codec[RequestT, ResponseT],
        name: str,
        version: str,
        request: RequestT,
        timeout_s: float | None,
    ) -> Result[ResponseT]:
        """Run one request end to end. The timing's total spans decode to encode."""
        start = time.perf_counter_ns()
        model = self.model(name, version)
        if model.engine is not None:
            raise InvalidInput(
                f"model '{model.info.name}' streams tokens, and this protocol serves tensor models "
                "only: use KServe ModelInfer / ModelStreamInfer, or the OpenAI API under /v1 on "
                "the HTTP port"
            )
        try:
            decoded = codec.decode(request, model.info)
            outputs, timing = await model.scheduler.infer(
                decoded.inputs, decoded.batch, decoded.outputs, timeout_s
            )
            response = codec.encode(model.info, decoded, outputs)
        except ServingError as exc:
            if self.probes:
                model.stats.record_failure(status_name(exc), time.perf_counter_ns() - start)
            raise
        if timing is not None:
            timing.total_ns = time.perf_counter_ns() - start
            model.stats.record_success(timing, decoded.batch)
        return Result(response, timing)
