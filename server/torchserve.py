"""TorchServe's gRPC inference API (Ping, Predictions) on the same port.

TorchServe hands a request's `input` map to a model handler, so its format is
the handler's choice. Ours reads JSON, in either of two forms:

1. one entry (any key, TorchServe clients use "data") holding a KServe v2 JSON
   inference request: {"id": ..., "inputs": [{"name": "INPUT0", "shape":
   [1, 4], "datatype": "FP32", "data": [...]}], "outputs": [{"name": ...}]};
2. one entry per model input, keyed by the input's name, holding a JSON array
   (nested lists give the shape; the datatype is the model's).

`prediction` in the response is a KServe v2 JSON inference response; its
"parameters" carry the server-side timing breakdown (see server/breakdown.py).
Errors end the RPC with the same status codes and messages as ModelInfer.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import empty_pb2

from server import breakdown, dtypes, tensors
from server.dataplane import Decoded
from server.errors import InvalidInput, ServingError, abort, grpc_code, in_band
from server.kserve import timeout_of
from server.proto import torchserve_pb2 as ts
from server.proto import torchserve_pb2_grpc as ts_grpc
from server.types import ModelInfo

if TYPE_CHECKING:
    from server.core import ServerCore


def _array(spec_name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    dt = dtypes.lookup(datatype)
    try:
        if dt.name == "BYTES":
            flat = np.asarray(data, dtype=object).reshape(-1)
            arr = np.array([x.encode() if isinstance(x, str) else bytes(x) for x in flat], dtype=object)
        else:
            arr = np.asarray(data, dtype=dt.numpy)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"input '{spec_name}': data is not a valid {datatype} array: {exc}") from None
    if arr.size != math.prod(shape):
        raise InvalidInput(
            f"input '{spec_name}': data holds {arr.size} elements, expected {math.prod(shape)} for "
            f"shape {shape}"
        )
    return arr.reshape(shape)


def decode_json(entries: dict[str, bytes], info: ModelInfo) -> tuple[dict[str, np.ndarray], list[str], str]:
    """Input arrays, requested output names and request id from the `input` map."""
    specs = {s.name: s for s in info.inputs}
    try:
        docs = {k: json.loads(v) for k, v in entries.items()}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            f"the request's input is not JSON: {exc}; expected a KServe v2 JSON body"
        ) from None
    except RecursionError:  # '[[[[...' deeper than Python's parser goes
        raise InvalidInput(
            "the request's input nests JSON arrays or objects too deeply; expected a KServe v2 JSON body"
        ) from None
    arrays: dict[str, np.ndarray] = {}
    outputs: list[str] = []
    request_id = ""
    if docs and set(docs) <= set(specs):
        for name, data in docs.items():
            shape = list(np.shape(data))
            tensors.check_shape(specs[name], shape, info.max_batch_size)
            arrays[name] = _array(name, specs[name].datatype, shape, data)
    elif len(docs) == 1 and isinstance(next(iter(docs.values())), dict):
        body = next(iter(docs.values()))
        request_id = str(body.get("id", ""))
        outputs = [o["name"] for o in body.get("outputs", []) if isinstance(o, dict) and "name" in o]
        for t in body.get("inputs") or []:
            if not isinstance(t, dict) or not {"name", "shape", "datatype", "data"} <= set(t):
                raise InvalidInput("each entry of 'inputs' needs name, shape, datatype and data")
            spec = specs.get(t["name"])
            if spec is None:
                raise InvalidInput(
                    f"unknown input '{t['name']}' for model '{info.name}'; expected inputs: "
                    + ", ".join(s.describe() for s in info.inputs)
                )
            if t["datatype"] != spec.datatype:
                raise InvalidInput(
                    f"input '{spec.name}': datatype {t['datatype']} does not match the model's "
                    f"{spec.datatype}"
                )
            shape = [int(d) for d in t["shape"]]
            tensors.check_shape(spec, shape, info.max_batch_size)
            arrays[spec.name] = _array(spec.name, spec.datatype, shape, t["data"])
    else:
        raise InvalidInput(
            f"input keys {sorted(docs)} are neither the model's inputs {sorted(specs)} nor a single "
            "KServe v2 JSON body (e.g. under 'data')"
        )
    missing = [n for n in specs if n not in arrays]
    if missing:
        raise InvalidInput(f"missing input(s) {missing} for model '{info.name}'")
    return arrays, outputs, request_id


def _json_data(arr: np.ndarray) -> list[Any]:
    if arr.dtype == object:
        return [x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
    if dtypes.from_numpy(arr.dtype).name in ("FP16", "BF16"):
        arr = arr.astype(np.float32)  # JSON numbers; tolist() of bfloat16 gives objects
    return list(arr.reshape(-1).tolist())


class TorchServeCodec:
    """TorchServe's PredictionsRequest (JSON in `input`) in, JSON `prediction` out."""

    def decode(self, request: ts.PredictionsRequest, info: ModelInfo) -> Decoded:
        arrays, wanted, request_id = decode_json(dict(request.input), info)
        known = [s.name for s in info.outputs]
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise InvalidInput(f"unknown requested output(s) {unknown} for model '{info.name}'")
        batch = next(iter(arrays.values())).shape[0] if info.batchable else 1
        return Decoded(arrays, batch, wanted or known, request_id=request_id)

    def encode(self, info: ModelInfo, decoded: Decoded, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
        return {
            "model_name": info.name,
            "model_version": info.version,
            "id": decoded.request_id,
            "outputs": [
                {
                    "name": n,
                    "datatype": dtypes.from_numpy(a.dtype).name,
                    "shape": list(a.shape),
                    "data": _json_data(a),
                }
                for n, a in outputs.items()
            ],
        }


class TorchServeServicer(ts_grpc.InferenceAPIsServiceServicer):
    def __init__(self, core: ServerCore, breakdown_in_response: bool = True) -> None:
        self.core = core
        self.plane = core.plane
        self.codec = TorchServeCodec()
        self.breakdown_in_response = breakdown_in_response

    async def Ping(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> ts.TorchServeHealthResponse:
        status = "Healthy" if self.core.ready() else "Unhealthy"
        return ts.TorchServeHealthResponse(health=json.dumps({"status": status}))

    async def Predictions(
        self, request: ts.PredictionsRequest, context: grpc.aio.ServicerContext
    ) -> ts.PredictionResponse:
        try:
            return await self._predict(request, context)
        except ServingError as exc:
            await abort(context, exc)

    async def StreamPredictions(
        self, request: ts.PredictionsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ts.PredictionResponse]:
        yield await self.Predictions(request, context)

    async def StreamPredictions2(
        self, request_iterator: AsyncIterator[ts.PredictionsRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ts.PredictionResponse]:
        async for request in request_iterator:
            try:
                resp = await self._predict(request, context)
            except ServingError as exc:
                resp = ts.PredictionResponse(
                    status=ts.RpcStatus(code=grpc_code(exc).value[0], message=in_band(exc))
                )
            if request.HasField("sequenceId"):
                resp.sequenceId = request.sequenceId
            yield resp

    async def _predict(
        self, request: ts.PredictionsRequest, context: grpc.aio.ServicerContext
    ) -> ts.PredictionResponse:
        result = await self.plane.infer(
            self.codec, request.model_name, request.model_version, request, timeout_of(context)
        )
        body = result.response
        if result.timing is not None and self.breakdown_in_response:
            body["parameters"] = breakdown.as_dict(result.timing)
        return ts.PredictionResponse(prediction=json.dumps(body).encode())
