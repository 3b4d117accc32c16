"""The KServe v2 protocol of a real server process: metadata, every datatype, every
bad input (and the server still serving after each), health, reflection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import ml_dtypes
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server import breakdown
from server.proto import grpc_service_pb2 as pb
from tests.conftest import ServerProcess, infer_request, output_array

DTYPES = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, 5, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 5, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 5, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 65504.0]], dtype=np.float16),
    "FP32": np.array([[0.1, -2.5, 3.4e38]], dtype=np.float32),
    "FP64": np.array([[0.1, -2.5, 1e300]], dtype=np.float64),
    "BF16": np.array([[0.5, -1.25, 3.0e38]], dtype=ml_dtypes.bfloat16),
    "BYTES": np.array([[b"abc", b"", "\u00e9\u4e2d\x00z".encode()]], dtype=object),
}


@pytest.fixture(scope="module")
def server(
    start_module_server: Callable[..., ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    models: list[dict[str, Any]] = [
        {"name": f"id_{k.lower()}", "source": "identity", "params": {"datatype": k}} for k in DTYPES
    ]
    models.append({"name": "fixed", "source": "identity", "params": {"dims": [4]}, "max_batch_size": 8})
    cfg = tmp_path_factory.mktemp("repo") / "models.yaml"
    cfg.write_text(yaml.safe_dump({"models": models}))
    return start_module_server("--model", str(cfg), "--max-message-bytes", str(1 << 20))


def test_health_metadata_and_config(server: ServerProcess) -> None:
    stub = server.stub()
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="fixed")).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "modelsoak" and "model_configuration" in meta.extensions
    md = stub.ModelMetadata(pb.ModelMetadataRequest(name="fixed"))
    assert md.platform == "onnxruntime_onnx" and list(md.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [("INPUT0", "FP32", [-1, 4])]
    cfg = stub.ModelConfig(pb.ModelConfigRequest(name="fixed")).config
    assert cfg.max_batch_size == 8 and list(cfg.input[0].dims) == [4]
    health = health_pb2_grpc.HealthStub(server.channel())
    for service in ("", "inference.GRPCInferenceService"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_our_services(server: ServerProcess) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel())
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "inference.GRPCInferenceService",
        "org.pytorch.serve.grpc.inference.InferenceAPIsService",
        "grpc.health.v1.Health",
    } <= names


# FP16 and BF16 have no typed contents field in the protocol: they travel raw only,
# and a typed request for them is refused (test_typed_half_precision_is_refused_with_reason).
RAW_ONLY = ("FP16", "BF16")
ROUND_TRIPS = [pytest.param(d, True, id=f"raw-{d}") for d in DTYPES] + [
    pytest.param(d, False, id=f"typed-{d}") for d in DTYPES if d not in RAW_ONLY
]


@pytest.mark.parametrize(("datatype", "raw"), ROUND_TRIPS)
def test_identity_round_trips_every_datatype(server: ServerProcess, datatype: str, raw: bool) -> None:
    arr = DTYPES[datatype]
    req = infer_request(f"id_{datatype.lower()}", {"INPUT0": arr}, raw=raw)
    # the request carries its data the way the case's name says
    assert bool(req.raw_input_contents) == raw and req.inputs[0].HasField("contents") == (not raw)
    resp = server.stub().ModelInfer(req)
    out = output_array(resp)
    assert resp.outputs[0].datatype == datatype
    assert out.dtype == arr.dtype and out.shape == arr.shape  # type: ignore[attr-defined]
    assert np.array_equal(out, arr)  # type: ignore[arg-type]
    # typed requests get typed responses, raw ones raw
    assert bool(resp.raw_output_contents) == raw
    timing = breakdown.parse(resp.parameters)
    assert timing is not None and timing["total"] >= timing["compute"] > 0


def _good(server: ServerProcess) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = output_array(server.stub().ModelInfer(infer_request("fixed", {"INPUT0": x})))
    assert np.array_equal(out, x)  # type: ignore[arg-type]


def _fixed(shape: tuple[int, ...] = (1, 4), dtype: type = np.float32) -> pb.ModelInferRequest:
    return infer_request("fixed", {"INPUT0": np.zeros(shape, dtype=dtype)})


def _raw_size() -> pb.ModelInferRequest:
    req = _fixed()
    req.raw_input_contents[0] = b"\x00" * 12
    return req


def _typed_count() -> pb.ModelInferRequest:
    req = infer_request("fixed", {"INPUT0": np.zeros((1, 4), np.float32)}, raw=False)
    del req.inputs[0].contents.fp32_contents[-1]
    return req


def _both() -> pb.ModelInferRequest:
    req = infer_request("fixed", {"INPUT0": np.zeros((1, 4), np.float32)}, raw=False)
    req.raw_input_contents.append(b"\x00" * 16)
    return req


def _renamed() -> pb.ModelInferRequest:
    req = _fixed()
    req.inputs[0].name = "IMAGE"
    return req


def _version(v: str) -> pb.ModelInferRequest:
    req = _fixed()
    req.model_version = v
    return req


def _with_output(name: str) -> pb.ModelInferRequest:
    req = _fixed()
    req.outputs.add(name=name)
    return req


BAD = {
    "wrong_shape": (
        lambda: _fixed((1, 5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["INPUT0", "expected 4", "received 5"],
    ),
    "wrong_rank": (
        lambda: _fixed((1, 2, 2)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["INPUT0", "3 dimensions", "expected 2"],
    ),
    "wrong_datatype": (
        lambda: _fixed(dtype=np.float64),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["INPUT0", "FP64", "FP32"],
    ),
    "raw_byte_size": (_raw_size, grpc.StatusCode.INVALID_ARGUMENT, ["INPUT0", "12 bytes", "expected 16"]),
    "typed_count": (_typed_count, grpc.StatusCode.INVALID_ARGUMENT, ["INPUT0", "3 elements", "expected 4"]),
    "missing_input": (
        lambda: pb.ModelInferRequest(model_name="fixed"),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["missing input", "INPUT0"],
    ),
    "unknown_input": (
        _renamed,
        grpc.StatusCode.INVALID_ARGUMENT,
        ["unknown input 'IMAGE'", "INPUT0 FP32[-1,4]"],
    ),
    "both_contents": (
        _both,
        grpc.StatusCode.INVALID_ARGUMENT,
        ["both typed contents and raw_input_contents"],
    ),
    "batch_too_big": (
        lambda: _fixed((9, 4)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["batch size 9", "max_batch_size 8"],
    ),
    "unknown_output": (
        lambda: _with_output("SCORES"),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["SCORES", "OUTPUT0"],
    ),
    "unknown_model": (
        lambda: infer_request("nope", {"INPUT0": np.zeros((1, 4), np.float32)}),
        grpc.StatusCode.NOT_FOUND,
        ["unknown model 'nope'", "fixed"],
    ),
    "unknown_version": (
        lambda: _version("7"),
        grpc.StatusCode.NOT_FOUND,
        ["no version '7'", "available versions: 1"],
    ),
    "too_large": (lambda: _fixed((8, 40000)), grpc.StatusCode.RESOURCE_EXHAUSTED, ["larger than max"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_precise_status_and_server_keeps_serving(server: ServerProcess, case: str) -> None:
    make, code, fragments = BAD[case]
    with pytest.raises(grpc.RpcError) as err:
        server.stub().ModelInfer(make())
    assert err.value.code() == code, err.value.details()
    for fragment in fragments:
        assert fragment in (err.value.details() or ""), err.value.details()
    _good(server)


@pytest.mark.parametrize("datatype", RAW_ONLY)
def test_typed_half_precision_is_refused_with_reason(server: ServerProcess, datatype: str) -> None:
    # A typed request as a client would try it: the values in fp32_contents.
    req = pb.ModelInferRequest(model_name=f"id_{datatype.lower()}")
    t = req.inputs.add(name="INPUT0", datatype=datatype, shape=[1, 1])
    t.contents.fp32_contents.append(1.0)
    with pytest.raises(grpc.RpcError) as err:
        server.stub().ModelInfer(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert f"{datatype} has no typed contents field" in details and "raw_input_contents" in details, details


def test_stream_infer_returns_errors_in_band(server: ServerProcess) -> None:
    good = infer_request("fixed", {"INPUT0": np.ones((1, 4), np.float32)})
    bad = _fixed((1, 5))
    responses = list(server.stub().ModelStreamInfer(iter([good, bad, good])))
    assert [bool(r.error_message) for r in responses] == [False, True, False]
    assert "INVALID_ARGUMENT" in responses[1].error_message


def test_statistics_count_successes_and_failures(server: ServerProcess) -> None:
    stub = server.stub()
    before = stub.ModelStatistics(pb.ModelStatisticsRequest(name="fixed")).model_stats[0]
    _good(server)
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(_fixed((1, 5)))
    after = stub.ModelStatistics(pb.ModelStatisticsRequest(name="fixed")).model_stats[0]
    st_b, st_a = before.inference_stats, after.inference_stats
    assert st_a.success.count == st_b.success.count + 1
    assert st_a.fail.count == st_b.fail.count + 1
    assert after.inference_count == before.inference_count + 2  # a batch of 2 samples
    assert st_a.compute_infer.ns > st_b.compute_infer.ns
    assert any(b.batch_size == 2 for b in after.batch_stats)
    all_stats = stub.ModelStatistics(pb.ModelStatisticsRequest())
    assert len(all_stats.model_stats) == len(DTYPES) + 1


def test_repository_index(server: ServerProcess) -> None:
    index = server.stub().RepositoryIndex(pb.RepositoryIndexRequest())
    assert {m.name for m in index.models} >= {"fixed", "id_fp32"}
    assert all(m.state == "READY" for m in index.models)


def test_model_repository_directory_with_versions(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    import onnx
    from onnx import TensorProto, helper

    def identity_file(path: Path, scale: float) -> None:
        node = helper.make_node("Mul", ["INPUT0", "k"], ["OUTPUT0"])
        k = helper.make_tensor("k", TensorProto.FLOAT, [], [scale])
        graph = helper.make_graph(
            [node],
            "scale",
            [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 3])],
            [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 3])],
            initializer=[k],
        )
        path.parent.mkdir(parents=True)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)

    repo = tmp_path / "repo"
    identity_file(repo / "scaler" / "1" / "model.onnx", 2.0)
    identity_file(repo / "scaler" / "2" / "model.onnx", 3.0)
    (repo / "scaler" / "modelsoak.yaml").write_text("max_batch_size: 4\n")
    srv = start_server("--model", str(repo), "--model-control-mode", "explicit")
    stub = srv.stub()
    x = np.ones((1, 3), np.float32)
    latest = output_array(stub.ModelInfer(infer_request("scaler", {"INPUT0": x})))
    req = infer_request("scaler", {"INPUT0": x})
    req.model_version = "1"
    v1 = output_array(stub.ModelInfer(req))
    assert np.allclose(latest, 3.0) and np.allclose(v1, 2.0)  # type: ignore[arg-type]
    assert stub.ModelConfig(pb.ModelConfigRequest(name="scaler")).config.max_batch_size == 4
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="scaler"))
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(infer_request("scaler", {"INPUT0": x}))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "unloaded" in (err.value.details() or "")
    assert not stub.ModelReady(pb.ModelReadyRequest(name="scaler")).ready
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="scaler"))
    assert np.allclose(output_array(stub.ModelInfer(infer_request("scaler", {"INPUT0": x}))), 3.0)  # type: ignore[arg-type]
