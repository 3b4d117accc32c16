"""The committed stubs are what our .proto files generate, and they import under
the protobuf runtime a plain `pip install modelsoak` resolves to."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import google.protobuf

from server.proto.generate import generate

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".tools" / "protobuf-latest"


def test_committed_stubs_match_regenerated(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert len(fresh) == 9, fresh
    for path in fresh:
        committed = ROOT / "server" / "proto" / path.name
        assert committed.exists(), f"{path.name} is generated but not committed; run make proto"
        assert committed.read_bytes() == path.read_bytes(), (
            f"server/proto/{path.name} differs from what the .proto files generate; run make proto"
        )


def _import_check(extra_path: Path | None) -> str:
    code = (
        "import sys, warnings\n"
        + (f"sys.path.insert(0, {str(extra_path)!r})\n" if extra_path else "")
        + "warnings.simplefilter('error')\n"
        "import google.protobuf\n"
        "from server.proto import grpc_service_pb2, grpc_service_pb2_grpc, torchserve_pb2_grpc\n"
        "r = grpc_service_pb2.ModelInferRequest(model_name='m')\n"
        "assert grpc_service_pb2.ModelInferRequest.FromString(r.SerializeToString()) == r\n"
        "print(google.protobuf.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_stubs_import_under_dev_protobuf() -> None:
    assert _import_check(None) == google.protobuf.__version__


def test_stubs_import_under_newest_protobuf(tmp_path: Path) -> None:
    """`make setup` downloads the newest protobuf wheel our dependency range admits
    (what users get from a plain pip install); the stubs must import under it."""
    wheels = sorted(WHEELS.glob("protobuf-*.whl"))
    assert wheels, f"no protobuf wheel in {WHEELS}; run make setup"
    with zipfile.ZipFile(wheels[-1]) as zf:
        zf.extractall(tmp_path)
    version = _import_check(tmp_path)
    assert version == wheels[-1].name.split("-")[1]
    assert int(version.split(".")[0]) >= 7, f"expected a protobuf 7 wheel, got {version}"
