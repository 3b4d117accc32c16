"""TorchServe model archives: real .mar files made by torch-model-archiver from
our built-in models, served, and driven over KServe v2 and TorchServe gRPC."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from server.archive import ArchiveError, open_archive
from server.builtin import BUILTIN_MODELS
from server.proto import grpc_service_pb2 as pb
from server.proto import torchserve_pb2 as ts
from server.proto import torchserve_pb2_grpc as ts_grpc
from tests.conftest import infer_request, output_array

ARCHIVER = str(Path(sys.executable).parent / "torch-model-archiver")
MLP = {"hidden": 32, "layers": 2}


def archive(store: Path, name: str, version: str, serialized: Path, handler: str = "base_handler",
            extra: list[Path] | None = None) -> Path:  # fmt: skip
    """A real .mar made by torch-model-archiver."""
    store.mkdir(parents=True, exist_ok=True)
    cmd = [ARCHIVER, "--model-name", name, "--version", version, "--serialized-file", str(serialized),
           "--handler", handler, "--export-path", str(store), "--force"]  # fmt: skip
    if extra:
        cmd += ["--extra-files", ",".join(str(p) for p in extra)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return store / f"{name}.mar"


def expected(x: np.ndarray) -> np.ndarray:
    module = BUILTIN_MODELS["mlp"].build(MLP).module()
    with torch.no_grad():
        return np.asarray(module(torch.from_numpy(x)).numpy())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """A TorchServe-style model store: the MLP as ONNX (v1.0) and as TorchScript (v2)."""
    work = tmp_path_factory.mktemp("mar")
    built = BUILTIN_MODELS["mlp"].build(MLP)
    store = work / "model-store"
    archive(store, "mlp_onnx", "1.0", built.onnx_path(model_cache))
    spec = work / "modelsoak.yaml"
    spec.write_text("inputs: ['INPUT0:FP32:-1x256']\n")
    archive(store, "mlp_ts", "2", built.torchscript_path(model_cache), extra=[spec])
    return store


@pytest.mark.slow
def test_model_store_served_over_kserve_and_torchserve(start_server, store: Path) -> None:
    server = start_server("--model", str(store))
    stub = server.stub()
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert {n: (m.version, m.state) for n, m in index.items()} == {
        "mlp_onnx": ("1.0", "READY"), "mlp_ts": ("2", "READY")}  # fmt: skip
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="mlp_onnx"))
    assert meta.versions == ["1.0"] and meta.platform == "onnxruntime_onnx"
    assert stub.ModelMetadata(pb.ModelMetadataRequest(name="mlp_ts")).platform == "pytorch_libtorch"

    x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
    want = expected(x)
    for name in ("mlp_onnx", "mlp_ts"):
        got = np.asarray(output_array(stub.ModelInfer(infer_request(name, {"INPUT0": x}))))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)

    ts_stub = ts_grpc.InferenceAPIsServiceStub(server.channel())
    resp = ts_stub.Predictions(
        ts.PredictionsRequest(
            model_name="mlp_onnx", model_version="1.0", input={"INPUT0": json.dumps(x.tolist()).encode()}
        )
    )
    out = json.loads(resp.prediction)["outputs"][0]
    np.testing.assert_allclose(np.asarray(out["data"]).reshape(out["shape"]), want, rtol=1e-4, atol=1e-5)


def test_single_archive_flag_and_custom_handler_refused(start_server, tmp_path: Path, model_cache: Path) -> None:
    onnx = BUILTIN_MODELS["identity"].build({}).onnx_path(model_cache)
    good = archive(tmp_path / "a", "ident", "3", onnx)
    server = start_server("--model", str(good))
    meta = server.stub().ModelMetadata(pb.ModelMetadataRequest(name="ident"))
    assert list(meta.versions) == ["3"]

    handler = tmp_path / "my_handler.py"
    handler.write_text("raise SystemExit('handler code must never run')\n")
    custom = archive(tmp_path / "b", "custom", "1", onnx, handler=str(handler))
    proc = start_server("--model", str(custom), wait=False)
    assert proc.proc.wait(120) == 2
    log = proc.log()
    assert "handler 'my_handler.py' is custom Python code" in log and "base_handler" in log, log


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _manifest(serialized: str) -> bytes:
    return json.dumps({"model": {"modelName": "m", "modelVersion": "1", "serializedFile": serialized,
                                 "handler": "base_handler"}}).encode()  # fmt: skip


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (None, "not a zip file"),
        ({"model.onnx": b"x"}, "no MAR-INF/MANIFEST.json"),
        ({"MAR-INF/MANIFEST.json": _manifest("model.onnx")}, "names serialized file 'model.onnx', which is not in"),
        ({"MAR-INF/MANIFEST.json": _manifest("../x.onnx"), "../x.onnx": b"evil"}, "member path(s) ['../x.onnx']"),
        ({"MAR-INF/MANIFEST.json": _manifest("/tmp/x.onnx"), "/tmp/x.onnx": b"evil"}, "leave the archive"),
        ({"MAR-INF/MANIFEST.json": b"{"}, "not valid JSON"),
        ({"MAR-INF/MANIFEST.json": _manifest("model.py"), "model.py": b""}, "is not ONNX or TorchScript"),
    ],
)
def test_bad_archives_named_and_nothing_extracted(tmp_path: Path, members: dict[str, bytes] | None,
                                                  message: str) -> None:  # fmt: skip
    mar = tmp_path / "work" / "bad.mar"
    mar.parent.mkdir()
    if members is None:
        mar.write_bytes(b"this is not a zip")
    else:
        _zip(mar, members)
    cache = tmp_path / "work" / "cache"
    with pytest.raises(ArchiveError, match=r"bad\.mar") as err:
        open_archive(mar, cache)
    assert message in str(err.value)
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "work" / "x.onnx").exists()
    assert not (cache / "archives").exists()


def test_bad_archive_exits_2(tmp_path: Path, model_cache: Path) -> None:
    mar = _zip(tmp_path / "slip.mar", {"MAR-INF/MANIFEST.json": _manifest("../x.onnx"), "../x.onnx": b"e"})
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--model", str(mar), "--grpc-port", "0", "--metrics-port", "-1",
         "--cache-dir", str(model_cache)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "slip.mar: member path(s) ['../x.onnx'] leave the archive" in proc.stderr
    assert not (tmp_path.parent / "x.onnx").exists()


def test_extraction_stays_in_cache(tmp_path: Path, model_cache: Path) -> None:
    onnx = BUILTIN_MODELS["identity"].build({}).onnx_path(model_cache)
    mar = archive(tmp_path / "s", "ident", "1", onnx)
    arc = open_archive(mar, tmp_path / "cache")
    assert arc.serialized.resolve().is_relative_to((tmp_path / "cache" / "archives").resolve())
    assert arc.serialized.read_bytes() == onnx.read_bytes()
    assert (arc.model_name, arc.version, arc.handler, arc.backend) == ("ident", "1", "base_handler", "onnx")
