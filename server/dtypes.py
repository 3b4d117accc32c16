"""The protocol's tensor datatypes and their numpy, Triton-config and typed-contents forms."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True)
class DType:
    """One KServe v2 datatype."""

    name: str
    numpy: np.dtype
    # The InferTensorContents field that carries it; None: raw contents only.
    contents_field: str | None
    # Triton's ModelConfig DataType enum value.
    triton_enum: int
    # Bytes per element; 0 for BYTES (variable-length elements).
    itemsize: int
    # onnx.TensorProto.DataType number (stable; no onnx import needed).
    onnx: int
    # ONNX Runtime's type name inside "tensor(...)".
    ort: str


_TABLE = [
    DType("BOOL", np.dtype(np.bool_), "bool_contents", 1, 1, 9, "bool"),
    DType("UINT8", np.dtype(np.uint8), "uint_contents", 2, 1, 2, "uint8"),
    DType("UINT16", np.dtype(np.uint16), "uint_contents", 3, 2, 4, "uint16"),
    DType("UINT32", np.dtype(np.uint32), "uint_contents", 4, 4, 12, "uint32"),
    DType("UINT64", np.dtype(np.uint64), "uint64_contents", 5, 8, 13, "uint64"),
    DType("INT8", np.dtype(np.int8), "int_contents", 6, 1, 3, "int8"),
    DType("INT16", np.dtype(np.int16), "int_contents", 7, 2, 5, "int16"),
    DType("INT32", np.dtype(np.int32), "int_contents", 8, 4, 6, "int32"),
    DType("INT64", np.dtype(np.int64), "int64_contents", 9, 8, 7, "int64"),
    DType("FP16", np.dtype(np.float16), None, 10, 2, 10, "float16"),
    DType("FP32", np.dtype(np.float32), "fp32_contents", 11, 4, 1, "float"),
    DType("FP64", np.dtype(np.float64), "fp64_contents", 12, 8, 11, "double"),
    # BYTES travel as numpy object arrays of `bytes`.
    DType("BYTES", np.dtype(object), "bytes_contents", 13, 0, 8, "string"),
    DType("BF16", np.dtype(ml_dtypes.bfloat16), None, 14, 2, 16, "bfloat16"),
]

DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}
_BY_NUMPY: dict[np.dtype, DType] = {d.numpy: d for d in _TABLE}
_BY_NUM: dict[int, DType] = {d.numpy.num: d for d in _TABLE}


def lookup(name: str) -> DType:
    """The DType for a datatype name; KeyError for an unknown one."""
    return DTYPES[name]


def from_numpy(dtype: np.dtype) -> DType:
    """The protocol datatype of a numpy dtype (bytes and str arrays are BYTES)."""
    # Keyed by the dtype's type number: hashing a dtype object costs more, and
    # this runs for every output of every response.
    found = _BY_NUM.get(dtype.num)
    if found is not None and found.numpy == dtype:
        return found
    if dtype.kind in ("O", "S", "U"):
        return DTYPES["BYTES"]
    try:
        return _BY_NUMPY[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no protocol datatype") from None


def names() -> list[str]:
    return [d.name for d in _TABLE]
