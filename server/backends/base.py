"""What the backends and the built-in models share: the load error and the datatype
table. A module of its own so that the backends import it without importing the
loader in server/backends/__init__.py (which imports them)."""

from __future__ import annotations

from server import dtypes
from server.dtypes import DType


class ModelLoadError(ValueError):
    """A model source, its parameters or its device cannot be served; the
    message names what was wrong and what was expected."""


# The datatype table lives in server.dtypes; the backends look names up here.
DATATYPES: dict[str, DType] = dtypes.DTYPES
ONNX_BF16 = DATATYPES["BF16"].onnx
ONNX_STRING = DATATYPES["BYTES"].onnx


def datatype_of_ort(type_string: str, where: str) -> str:
    """KServe datatype of an ONNX Runtime type string such as "tensor(float)"."""
    for d in DATATYPES.values():
        if type_string == f"tensor({d.ort})":
            return d.name
    raise ModelLoadError(
        f"{where} has type {type_string}, which modelsoak cannot serve; supported: {', '.join(DATATYPES)}"
    )
