"""Regenerate the committed stubs from our .proto files (needs grpcio-tools).

`make proto` runs this; tests/test_proto.py runs it into a temporary folder
and fails when the result differs from what is committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent.parent
PROTOS = ("model_config.proto", "grpc_service.proto", "torchserve.proto")


def generate(out_root: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py under out_root/server/proto."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    (out_root / "server" / "proto").mkdir(parents=True, exist_ok=True)
    for name in PROTOS:
        rc = protoc.main([
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"-I{include}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"server/proto/{name}",
        ])  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"protoc failed on {name} (exit {rc})")
    return sorted((out_root / "server" / "proto").glob("*_pb2*.py*"))


if __name__ == "__main__":
    written = generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
    print("\n".join(str(p) for p in written))
