"""KServe v2 gRPC for streaming models: ModelStreamInfer with one response per token.

Requests look like those of Triton's vLLM backend: a BYTES `text_input` (the
prompt), and the options `max_tokens`, `temperature`, `seed` and `stop` as
request parameters or as inputs (or in a JSON `sampling_parameters` input);
an input `stream` (BOOL) set to false asks for the whole text in one response.
Responses carry the new text in a BYTES `text_output` and follow Triton's
decoupled-model convention: every response has the bool parameter
`triton_final_response`; the last token's response has it true, unless the
request set `triton_enable_empty_final_response`, in which case every token
response says false and an empty response (no outputs) ends the request.
Tokens whose bytes may begin a stop sequence are held back and sent with a
later response, so a request can have fewer responses than tokens.

Unary ModelInfer on a streaming model returns the whole text in one response.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np

from server import breakdown, dtypes, tensors
from server.dataplane import DataPlane
from server.errors import DeadlineExceeded, InvalidInput, ServingError, in_band
from server.generation import (
    OPTIONS,
    TEXT_INPUT,
    TEXT_OUTPUT,
    Event,
    FinishEvent,
    Generation,
    GenerationEngine,
    GenerationRequest,
    TokenEvent,
    options_from,
)
from server.proto import grpc_service_pb2 as pb

_LEN = struct.Struct("<I")
FINAL_KEY = "triton_final_response"
EMPTY_FINAL_KEY = "triton_enable_empty_final_response"
_INPUTS = (TEXT_INPUT, *OPTIONS, "stream", "sampling_parameters", "exclude_input_in_output")


def _values(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> list[Any]:
    try:
        dt = dtypes.lookup(tensor.datatype)
    except KeyError:
        raise InvalidInput(f"input '{tensor.name}': unknown datatype {tensor.datatype!r}") from None
    count = math.prod(tensor.shape)
    if raw is not None:
        if dt.name == "BYTES":
            return list(tensors.decode_bytes_elements(raw, count, tensor.name))
        if len(raw) != count * dt.itemsize:
            raise InvalidInput(
                f"input '{tensor.name}': {len(raw)} raw bytes do not fit {dt.name}{list(tensor.shape)}"
            )
        return list(np.frombuffer(raw, dt.numpy).tolist())
    return list(getattr(tensor.contents, str(dt.contents_field))) if dt.contents_field else []


def _scalar(name: str, values: list[Any]) -> Any:
    if len(values) != 1:
        raise InvalidInput(f"input '{name}' must hold one element, received {len(values)}")
    value = values[0]
    return value.decode(errors="replace") if isinstance(value, bytes) and name != TEXT_INPUT else value


def _param(p: pb.InferParameter) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def read_request(request: pb.ModelInferRequest, engine: GenerationEngine) -> tuple[GenerationRequest, bool]:
    """The prompt and options of a request, and whether it wants a stream."""
    given: dict[str, Any] = {}
    for key in OPTIONS:
        if key in request.parameters:
            given[key] = _param(request.parameters[key])
    stop = given.get("stop")
    if isinstance(stop, str) and stop.startswith("["):
        try:
            given["stop"] = json.loads(stop)
        except ValueError:
            raise InvalidInput(f"parameter 'stop' is not a JSON list of strings: {stop!r}") from None
    found: dict[str, Any] = {}
    raw = request.raw_input_contents
    for i, tensor in enumerate(request.inputs):
        if tensor.name not in _INPUTS:
            raise InvalidInput(
                f"unknown input '{tensor.name}' for streaming model '{engine.name}'; expected "
                f"'{TEXT_INPUT}' (BYTES), optionally {', '.join(_INPUTS[1:])}"
            )
        values = _values(tensor, raw[i] if raw else None)
        found[tensor.name] = values if tensor.name == "stop" else _scalar(tensor.name, values)
    if "sampling_parameters" in found:
        try:
            sampling = json.loads(found.pop("sampling_parameters"))
        except ValueError:
            raise InvalidInput("input 'sampling_parameters' must be a JSON object") from None
        if not isinstance(sampling, dict):
            raise InvalidInput("input 'sampling_parameters' must be a JSON object")
        given.update({k: v for k, v in sampling.items() if k in OPTIONS})
    if "stop" in found:
        given["stop"] = [s.decode(errors="replace") if isinstance(s, bytes) else s for s in found.pop("stop")]
    given.update({k: found[k] for k in OPTIONS if k in found})
    prompt = found.get(TEXT_INPUT)
    if not isinstance(prompt, bytes):
        raise InvalidInput(
            f"streaming model '{engine.name}' needs the input '{TEXT_INPUT}' (BYTES, shape [1]) with the prompt"
        )
    opts = options_from(given, engine.default_max_tokens, engine.max_context)
    return GenerationRequest(prompt, **opts), bool(found.get("stream", True))


class StreamCall:
    """One request of a stream: turns its generation's events into responses."""

    def __init__(self, request: pb.ModelInferRequest, put: Callable[[pb.ModelStreamInferResponse], None],
                 probes: bool, collect: bool, on_done: Callable[[StreamCall], None]) -> None:  # fmt: skip
        self.request = request
        self.put = put
        self.probes = probes
        self.collect = collect
        self.empty_final = _param(request.parameters[EMPTY_FINAL_KEY]) is True if (
            EMPTY_FINAL_KEY in request.parameters) else False  # fmt: skip
        self.on_done = on_done
        self.gen: Generation | None = None
        self.parts: list[bytes] = []

    def _response(self, text: bytes | None, final: bool) -> pb.ModelInferResponse:
        r = self.request
        resp = pb.ModelInferResponse(model_name=r.model_name, model_version=r.model_version, id=r.id)
        if text is not None:
            out = resp.outputs.add(name=TEXT_OUTPUT, datatype="BYTES", shape=[1])
            if r.raw_input_contents or not r.inputs:
                resp.raw_output_contents.append(_LEN.pack(len(text)) + text)  # one BYTES element
            else:
                out.contents.bytes_contents.append(text)
        resp.parameters[FINAL_KEY].bool_param = final
        return resp

    def _finish_params(self, resp: pb.ModelInferResponse, reason: str, tokens: int) -> None:
        gen = self.gen
        if not self.probes or gen is None:
            return
        p = resp.parameters
        p[breakdown.PROMPT_TOKENS_KEY].int64_param = gen.prompt_tokens
        p[breakdown.COMPLETION_TOKENS_KEY].int64_param = tokens
        p[breakdown.FINISH_REASON_KEY].string_param = reason
        p[breakdown.TOTAL_KEY].int64_param = time.perf_counter_ns() - gen.request.arrived_ns

    def __call__(self, event: Event) -> None:
        if isinstance(event, FinishEvent):
            self._finished(event)
        elif self.collect:
            self.parts.append(event.text)
        elif event.finish_reason and not self.empty_final:
            resp = self._response(event.text, True)
            self._token_params(resp, event)
            self._finish_params(resp, event.finish_reason, event.index + 1)
            self.put(pb.ModelStreamInferResponse(infer_response=resp))
        elif event.text:
            resp = self._response(event.text, False)
            self._token_params(resp, event)
            self.put(pb.ModelStreamInferResponse(infer_response=resp))

    def _token_params(self, resp: pb.ModelInferResponse, event: TokenEvent) -> None:
        if not self.probes:
            return
        p = resp.parameters
        p[breakdown.SENT_KEY].int64_param = time.perf_counter_ns()
        p[breakdown.TOKEN_INDEX_KEY].int64_param = event.index
        p[breakdown.OCCUPANCY_KEY].int64_param = event.occupancy
        p[breakdown.STEP_KEY].int64_param = event.step_ns
        gen = self.gen
        if event.index == 0 and gen is not None:
            p[breakdown.QUEUE_KEY].int64_param = max(0, gen.started_ns - gen.request.arrived_ns)
            p[breakdown.PREFILL_KEY].int64_param = gen.prefill_ns
            p[breakdown.TTFT_KEY].int64_param = gen.first_token_ns - gen.request.arrived_ns

    def _finished(self, event: FinishEvent) -> None:
        if event.error is not None:
            self.put(self.error(event.error))
        elif event.reason != "cancelled" and (self.collect or self.empty_final):
            resp = self._response(b"".join(self.parts) if self.collect else None, True)
            self._finish_params(resp, event.reason, event.completion_tokens)
            self.put(pb.ModelStreamInferResponse(infer_response=resp))
        self.on_done(self)

    def error(self, exc: Exception) -> pb.ModelStreamInferResponse:
        err = exc if isinstance(exc, ServingError) else ServingError(str(exc))
        r = self.request
        return pb.ModelStreamInferResponse(
            error_message=in_band(err),
            infer_response=pb.ModelInferResponse(
                model_name=r.model_name, model_version=r.model_version, id=r.id
            ),
        )


class GenerationStreams:
    """ModelStreamInfer and unary ModelInfer for streaming models."""

    def __init__(self, plane: DataPlane, probes: bool) -> None:
        self.plane = plane
        self.probes = probes

    def is_streaming(self, request: pb.ModelInferRequest) -> bool:
        try:
            return self.plane.model(request.model_name, request.model_version).engine is not None
        except ServingError:
            return False  # the tensor path says what is wrong

    async def _start(self, call: StreamCall, *, force_collect: bool = False) -> None:
        r = call.request

        def parse(engine: GenerationEngine) -> GenerationRequest:
            gen_request, stream = read_request(r, engine)
            call.collect = force_collect or not stream
            return gen_request

        _, call.gen = await self.plane.generate(r.model_name, r.model_version, parse, call)

    async def unary(self, request: pb.ModelInferRequest, timeout_s: float | None) -> pb.ModelInferResponse:
        """The whole text in one response."""
        done: asyncio.Queue[pb.ModelStreamInferResponse] = asyncio.Queue()
        call = StreamCall(request, done.put_nowait, self.probes, True, lambda c: None)
        await self._start(call, force_collect=True)
        try:
            out = await asyncio.wait_for(done.get(), timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the request's deadline passed while '{request.model_name}' generated"
            ) from None
        finally:
            assert call.gen is not None
            call.gen.cancel()
        if out.error_message:
            raise ServingError(out.error_message)
        return out.infer_response

    async def stream(
        self,
        requests: AsyncIterator[pb.ModelInferRequest],
        unary: Callable[[pb.ModelInferRequest], Awaitable[pb.ModelStreamInferResponse]],
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Every request of the stream at once: generations interleave their tokens;
        requests to tensor models are answered in order by `unary`."""
        out: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        calls: set[StreamCall] = set()
        reading = True

        def done(call: StreamCall) -> None:
            calls.discard(call)
            if not calls and not reading:
                out.put_nowait(None)

        async def read() -> None:
            nonlocal reading
            try:
                async for request in requests:
                    if not self.is_streaming(request):
                        out.put_nowait(await unary(request))
                        continue
                    call = StreamCall(request, out.put_nowait, self.probes, False, done)
                    calls.add(call)
                    try:
                        await self._start(call)
                    except ServingError as exc:
                        calls.discard(call)
                        out.put_nowait(call.error(exc))
            finally:
                reading = False
                if not calls:
                    out.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (item := await out.get()) is not None:
                yield item
            await reader  # its errors (a broken request stream) end the RPC
        finally:
            reader.cancel()
            for call in list(calls):
                if call.gen is not None:
                    call.gen.cancel()
