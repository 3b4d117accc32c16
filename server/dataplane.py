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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import numpy as np

from server.errors import ServingError, ShuttingDown, status_name
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
