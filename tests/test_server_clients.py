"""Clients nobody here wrote against our server: tritonclient.grpc unchanged, the
TorchServe gRPC API; plus both backends agreeing, and on-demand profiling."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from google.protobuf import empty_pb2

from server.proto import grpc_service_pb2 as pb
from server.proto import torchserve_pb2 as ts
from server.proto import torchserve_pb2_grpc as ts_grpc
from tests.conftest import ServerProcess, infer_request, output_array
from tests.server_support import get_json, wait_until

# tritonclient registers Triton's own `inference.*` protobuf messages, which clash
# with ours in one process, so it runs in a subprocess of its own.
TRITON_SCRIPT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as tc

client = tc.InferenceServerClient(url=sys.argv[1])
out = {"live": client.is_server_live(), "ready": client.is_server_ready(),
       "model_ready": client.is_model_ready("mlp")}
meta = client.get_model_metadata("mlp", as_json=True)
out["inputs"] = meta["inputs"]
cfg = client.get_model_config("mlp", as_json=True)["config"]
out["max_batch_size"] = cfg.get("max_batch_size")
x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
inp = tc.InferInput("INPUT0", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
res = client.infer("mlp", [inp], outputs=[tc.InferRequestedOutput("OUTPUT0")])
y = res.as_numpy("OUTPUT0")
out["shape"] = list(y.shape)
out["params"] = sorted(res.get_response().parameters.keys())
np.save(sys.argv[2], y)
np.save(sys.argv[3], x)
words = np.array([[b"alpha", b"beta"]], dtype=object)
w = tc.InferInput("INPUT0", [1, 2], "BYTES")
w.set_data_from_numpy(words)
out["bytes"] = [v.decode() for v in client.infer("words", [w]).as_numpy("OUTPUT0").reshape(-1)]
h = np.array([[1.5, -2.0]], dtype=np.float16)
hi = tc.InferInput("INPUT0", [1, 2], "FP16")
hi.set_data_from_numpy(h)
out["fp16"] = client.infer("halves", [hi]).as_numpy("OUTPUT0").astype(float).reshape(-1).tolist()
try:
    bad = tc.InferInput("INPUT0", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    client.infer("mlp", [bad])
    out["bad"] = "accepted"
except tc.InferenceServerException as exc:
    out["bad"] = [exc.status(), exc.message()]
stats = client.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
out["stats_success"] = int(stats["inference_stats"]["success"]["count"])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def server(
    start_module_server: Callable[..., ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    models = [
        {"name": "mlp", "source": "mlp"},
        {"name": "mlp_torch", "source": "mlp", "backend": "torch"},
        {"name": "words", "source": "identity", "params": {"datatype": "BYTES"}},
        {"name": "halves", "source": "identity", "params": {"datatype": "FP16"}},
    ]
    cfg = tmp_path_factory.mktemp("repo") / "models.yaml"
    cfg.write_text(yaml.safe_dump({"models": models}))
    return start_module_server(
        "--model", str(cfg), "--profile-dir", str(cfg.parent / "profiles"), "--allow-profiling"
    )


def test_tritonclient_unchanged_works(server: ServerProcess, tmp_path: Path) -> None:
    y_path, x_path = tmp_path / "y.npy", tmp_path / "x.npy"
    run = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT, server.address, str(y_path), str(x_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["live"] and out["ready"] and out["model_ready"]
    assert out["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": ["-1", "256"]}]
    assert int(out["max_batch_size"]) > 0
    assert out["shape"] == [3, 10]
    assert "modelsoak_compute_ns" in out["params"]
    assert out["bytes"] == ["alpha", "beta"]
    assert out["fp16"] == [1.5, -2.0]
    assert out["bad"][0] == "StatusCode.INVALID_ARGUMENT" and "expected 256" in out["bad"][1]
    assert out["stats_success"] >= 1
    # the same input through our own stub gives the same output
    x = np.load(x_path)
    ours = output_array(server.stub().ModelInfer(infer_request("mlp", {"INPUT0": x})))
    assert np.allclose(np.load(y_path), ours)  # type: ignore[arg-type]


def test_onnx_and_torch_backends_agree(server: ServerProcess) -> None:
    x = np.random.default_rng(1).standard_normal((5, 256)).astype(np.float32)
    stub = server.stub()
    a = output_array(stub.ModelInfer(infer_request("mlp", {"INPUT0": x})))
    b = output_array(stub.ModelInfer(infer_request("mlp_torch", {"INPUT0": x})))
    assert np.allclose(a, b, rtol=1e-4, atol=1e-5)  # type: ignore[arg-type]
    platforms = {
        m: stub.ModelMetadata(pb.ModelMetadataRequest(name=m)).platform for m in ("mlp", "mlp_torch")
    }
    assert platforms == {"mlp": "onnxruntime_onnx", "mlp_torch": "pytorch_libtorch"}


def _ts_stub(server: ServerProcess) -> ts_grpc.InferenceAPIsServiceStub:
    return ts_grpc.InferenceAPIsServiceStub(server.channel())


def test_torchserve_ping_and_predictions(server: ServerProcess) -> None:
    stub = _ts_stub(server)
    assert json.loads(stub.Ping(empty_pb2.Empty()).health) == {"status": "Healthy"}
    x = np.random.default_rng(2).standard_normal((2, 256)).astype(np.float32)
    body = {
        "id": "r1",
        "inputs": [{"name": "INPUT0", "shape": [2, 256], "datatype": "FP32", "data": x.tolist()}],
    }
    resp = stub.Predictions(
        ts.PredictionsRequest(model_name="mlp", input={"data": json.dumps(body).encode()})
    )
    doc = json.loads(resp.prediction)
    assert doc["id"] == "r1" and doc["outputs"][0]["shape"] == [2, 10]
    assert doc["parameters"]["modelsoak_server_total_ns"] > 0
    ours = output_array(server.stub().ModelInfer(infer_request("mlp", {"INPUT0": x})))
    assert np.allclose(np.array(doc["outputs"][0]["data"]).reshape(2, 10), ours, atol=1e-5)  # type: ignore[arg-type]
    # the per-input form: the key is the model's input name, the value a nested list
    resp = stub.Predictions(
        ts.PredictionsRequest(model_name="mlp", input={"INPUT0": json.dumps(x.tolist()).encode()})
    )
    assert json.loads(resp.prediction)["outputs"][0]["shape"] == [2, 10]


@pytest.mark.parametrize(
    ("request_input", "model", "code", "fragment"),
    [
        ({"data": b"not json"}, "mlp", grpc.StatusCode.INVALID_ARGUMENT, "not JSON"),
        ({"INPUT0": b"[[1.0, 2.0]]"}, "mlp", grpc.StatusCode.INVALID_ARGUMENT, "expected 256"),
        ({"data": b"[1]"}, "nope", grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        ({"IMAGE": b"[1]", "x": b"[2]"}, "mlp", grpc.StatusCode.INVALID_ARGUMENT, "KServe v2 JSON body"),
    ],
)
def test_torchserve_bad_input(
    server: ServerProcess, request_input: dict[str, bytes], model: str, code: grpc.StatusCode, fragment: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _ts_stub(server).Predictions(ts.PredictionsRequest(model_name=model, input=request_input))
    assert err.value.code() == code and fragment in (err.value.details() or ""), err.value.details()
    assert json.loads(_ts_stub(server).Ping(empty_pb2.Empty()).health)["status"] == "Healthy"


@pytest.mark.parametrize("model", ["mlp", "mlp_torch"])
def test_profile_a_running_server(server: ServerProcess, model: str) -> None:
    req = urllib.request.Request(f"{server.metrics_url}/profile?model={model}&requests=4", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        job = json.loads(resp.read())
    assert resp.status == 202 and job["state"] == "recording"
    stub = server.stub()
    x = np.ones((1, 256), np.float32)
    for _ in range(4):
        stub.ModelInfer(infer_request(model, {"INPUT0": x}))
    jobs = wait_until(
        lambda: [j for j in get_json(f"{server.metrics_url}/profile")["jobs"] if j["id"] == job["id"]],
        lambda js: js[0]["state"] != "recording", 60, "profile finished",
    )  # fmt: skip
    assert jobs[0]["state"] == "done", jobs[0]
    assert jobs[0]["seen"] >= 4
    trace = json.loads(Path(jobs[0]["traces"][0]).read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    assert len(events) > 0
    assert Path(jobs[0]["summaries"][0]).read_text().strip()


def test_profile_at_start_up(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    srv = start_server("--model", "mlp", "--profile-requests", "3", "--profile-dir", str(tmp_path / "prof"))
    stub = srv.stub()
    for _ in range(3):
        stub.ModelInfer(infer_request("mlp", {"INPUT0": np.ones((1, 256), np.float32)}))
    jobs = wait_until(
        lambda: get_json(f"{srv.metrics_url}/profile")["jobs"],
        lambda js: bool(js) and js[0]["state"] != "recording", 60, "profile finished",
    )  # fmt: skip
    assert jobs[0]["state"] == "done" and jobs[0]["requests"] == 3
    traces = sorted((tmp_path / "prof").glob("*.trace.json"))
    assert traces and json.loads(traces[0].read_text())
