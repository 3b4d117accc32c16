"""Turning protocol tensors into numpy arrays and back, with validation.

Every check names the input, what the model expects and what arrived. Raw
contents are wrapped without a copy (np.frombuffer); typed contents are
converted from their repeated field.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from server import dtypes
from server.errors import InvalidInput
from server.proto import grpc_service_pb2 as pb
from server.types import ModelInfo, TensorSpec

_LEN = struct.Struct("<I")


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def check_shape(spec: TensorSpec, shape: Sequence[int], max_batch_size: int) -> None:
    """Raise InvalidInput unless `shape` fits `spec` (where -1 admits any size)."""
    if len(shape) != len(spec.shape):
        raise InvalidInput(
            f"input '{spec.name}': shape {_shape_str(shape)} has {len(shape)} dimensions, "
            f"expected {len(spec.shape)} as in {_shape_str(spec.shape)}"
        )
    for axis, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if got < 0:
            raise InvalidInput(
                f"input '{spec.name}': shape {_shape_str(shape)} has a negative dimension "
                f"{got} at axis {axis}; sizes must be >= 0"
            )
        if want != -1 and got != want:
            raise InvalidInput(
                f"input '{spec.name}': shape {_shape_str(shape)} does not match the model's "
                f"{_shape_str(spec.shape)} at axis {axis} (expected {want}, received {got})"
            )
    if max_batch_size > 0:
        if shape[0] < 1:
            raise InvalidInput(f"input '{spec.name}': batch size {shape[0]} must be at least 1")
        if shape[0] > max_batch_size:
            raise InvalidInput(
                f"input '{spec.name}': batch size {shape[0]} exceeds the model's "
                f"max_batch_size {max_batch_size}"
            )


def decode_bytes_elements(raw: bytes, count: int, name: str) -> np.ndarray:
    """Split length-prefixed BYTES elements (4-byte little-endian lengths)."""
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    pos = 0
    for i in range(count):
        if pos + 4 > len(view):
            raise InvalidInput(
                f"input '{name}': raw BYTES contents end after {i} of {count} elements "
                f"({len(raw)} bytes); each element needs a 4-byte length prefix"
            )
        (n,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + n > len(view):
            raise InvalidInput(
                f"input '{name}': raw BYTES element {i} declares {n} bytes but only {len(view) - pos} remain"
            )
        out[i] = bytes(view[pos : pos + n])
        pos += n
    if pos != len(view):
        raise InvalidInput(
            f"input '{name}': raw BYTES contents hold {len(view) - pos} bytes after the "
            f"{count} elements the shape calls for"
        )
    return out


def encode_bytes_elements(arr: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in arr.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def _from_raw(raw: bytes, spec: TensorSpec, dt: dtypes.DType, shape: list[int]) -> np.ndarray:
    count = math.prod(shape)
    if dt.name == "BYTES":
        return decode_bytes_elements(raw, count, spec.name).reshape(shape)
    expected = count * dt.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{spec.name}': raw contents hold {len(raw)} bytes, expected {expected} "
            f"for {dt.name}{_shape_str(shape)} ({count} elements x {dt.itemsize} bytes)"
        )
    return np.frombuffer(raw, dtype=dt.numpy).reshape(shape)


def _from_typed(
    tensor: pb.ModelInferRequest.InferInputTensor,
    spec: TensorSpec,
    dt: dtypes.DType,
    shape: list[int],
) -> np.ndarray:
    if dt.contents_field is None:
        raise InvalidInput(
            f"input '{spec.name}': {dt.name} has no typed contents field; send it in raw_input_contents"
        )
    contents = tensor.contents
    values = getattr(contents, dt.contents_field)
    count = math.prod(shape)
    if len(values) != count:
        used = [f.name for f, v in contents.ListFields() if f.name != dt.contents_field and v]
        hint = f" (values were found in {', '.join(used)})" if used else ""
        raise InvalidInput(
            f"input '{spec.name}': {dt.contents_field} holds {len(values)} elements, expected "
            f"{count} for {dt.name}{_shape_str(shape)}{hint}"
        )
    if dt.name == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    return np.asarray(values, dtype=dt.numpy).reshape(shape)


def _shape_fits(want: tuple[int, ...], got: Sequence[int]) -> bool:
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):  # noqa: SIM110 - faster than all() on the hot path
        if g < 0 or (w != -1 and g != w):
            return False
    return True


def decode_inputs(request: pb.ModelInferRequest, info: ModelInfo) -> tuple[dict[str, np.ndarray], int, bool]:
    """Validate and decode a request's inputs.

    Returns the arrays by input name, the batch size (1 for a model that does not
    batch) and whether typed contents were used (responses mirror that choice).
    """
    specs = info.input_map
    raw = request.raw_input_contents
    tensors = request.inputs
    typed = False
    for t in tensors:
        if t.HasField("contents"):
            typed = True
            break
    if raw and typed:
        raise InvalidInput(
            "both typed contents and raw_input_contents were given; use one or the other for all inputs"
        )
    if raw and len(raw) != len(tensors):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries but the request names "
            f"{len(tensors)} inputs; expected one entry per input, in order"
        )
    max_batch = info.max_batch_size
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(tensors):
        name = tensor.name
        spec = specs.get(name)
        if spec is None:
            raise InvalidInput(
                f"unknown input '{name}' for model '{info.name}'; expected inputs: "
                + ", ".join(s.describe() for s in info.inputs)
            )
        if name in arrays:
            raise InvalidInput(f"input '{name}' is given more than once")
        if tensor.datatype != spec.datatype:
            raise InvalidInput(
                f"input '{name}': datatype {tensor.datatype or '(empty)'} does not match "
                f"the model's {spec.datatype}"
            )
        shape = list(tensor.shape)
        if not _shape_fits(spec.shape, shape) or (max_batch > 0 and not 1 <= shape[0] <= max_batch):
            check_shape(spec, shape, max_batch)
        dt = info.input_dtypes[name]
        if raw:
            arrays[name] = _from_raw(raw[i], spec, dt, shape)
        elif typed and tensor.HasField("contents"):
            arrays[name] = _from_typed(tensor, spec, dt, shape)
        else:
            raise InvalidInput(
                f"input '{name}' carries no data: set its typed contents or raw_input_contents"
            )
    if len(arrays) != len(specs):
        missing = [s.name for s in info.inputs if s.name not in arrays]
        raise InvalidInput(
            f"missing input(s) {', '.join(repr(m) for m in missing)} for model '{info.name}'; "
            "expected inputs: " + ", ".join(s.describe() for s in info.inputs)
        )
    if not info.batchable:
        return arrays, 1, typed
    if len(arrays) == 1:
        return arrays, shape[0], typed
    sizes = {n: a.shape[0] for n, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise InvalidInput(f"inputs disagree on the batch size: {sizes}")
    return arrays, next(iter(sizes.values())), typed


def requested_outputs(request: pb.ModelInferRequest, info: ModelInfo) -> list[str]:
    """Names of the outputs to return: those requested, or all of the model's."""
    known = [s.name for s in info.outputs]
    if not request.outputs:
        return known
    names = []
    for out in request.outputs:
        if out.name not in known:
            raise InvalidInput(
                f"unknown requested output '{out.name}' for model '{info.name}'; the model's "
                f"outputs are: {', '.join(known)}"
            )
        names.append(out.name)
    return names


def encode_outputs(response: pb.ModelInferResponse, outputs: dict[str, np.ndarray], typed: bool) -> None:
    """Append the output tensors to `response`: raw, or typed when `typed` and every
    output has a typed field (the protocol forbids mixing the two in one response)."""
    kinds = {name: dtypes.from_numpy(arr.dtype) for name, arr in outputs.items()}
    typed = typed and all(dt.contents_field is not None for dt in kinds.values())
    for name, arr in outputs.items():
        dt = kinds[name]
        out = response.outputs.add()
        out.name = name
        out.datatype = dt.name
        out.shape.extend(arr.shape)
        if typed:
            field = getattr(out.contents, str(dt.contents_field))
            if dt.name == "BYTES":
                field.extend(_as_bytes(x) for x in arr.reshape(-1))
            else:
                field.extend(arr.reshape(-1).tolist())
        elif dt.name == "BYTES":
            response.raw_output_contents.append(encode_bytes_elements(arr))
        else:
            # tobytes() copies in C order whatever the layout.
            response.raw_output_contents.append(arr.tobytes())


def _as_bytes(item: Any) -> bytes:
    return item if isinstance(item, bytes) else str(item).encode()
