"""The loader and both backends: model files, errors for bad sources, profiling
from other threads, and the CUDA paths (skipped without a GPU)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from server.backends import ModelLoadError, ModelSource, PreparedModel, prepare_model
from server.errors import InvalidInput
from server.types import Backend, TensorSpec

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "modelsoak-models"


def load(cache_dir: Path, source: str, **kw: Any) -> PreparedModel:
    return prepare_model(ModelSource(name=kw.pop("name", "m"), source=source, **kw), cache_dir)


def write_onnx(path: Path, batch: int | str, feature: int | str = 4) -> Path:
    """A tiny Relu model with the given first and second input dims."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, feature])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, feature])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x), x.sum(dim=1).to(torch.float64)


# --------------------------------------------------------------------------- model files


def test_onnx_file_symbolic_dims_become_minus_one(tmp_path: Path, cache_dir: Path) -> None:
    model = load(cache_dir, str(write_onnx(tmp_path / "dyn.onnx", "N", "F")))
    assert model.inputs == [TensorSpec("x", "FP32", (-1, -1))]
    assert model.outputs == [TensorSpec("y", "FP32", (-1, -1))]
    assert model.max_batch_size == 32 and model.description == "ONNX model from dyn.onnx"
    out = model.create_instance(0).run({"x": np.array([[-1.0, 2.0]], np.float32)}, ["y"])
    np.testing.assert_array_equal(out.outputs["y"], [[0.0, 2.0]])


def test_onnx_file_with_fixed_batch_is_not_batchable(tmp_path: Path, cache_dir: Path) -> None:
    path = write_onnx(tmp_path / "fixed.onnx", 1)
    model = load(cache_dir, str(path))
    assert model.max_batch_size == 0 and model.inputs[0].shape == (1, 4)
    with pytest.raises(ModelLoadError, match=r"not batchable: x FP32\[1,4\].*must be 0, not 8"):
        load(cache_dir, str(path), max_batch_size=8)


def test_torchscript_file_with_inferred_outputs(tmp_path: Path, cache_dir: Path) -> None:
    module = TwoHeads().eval()
    path = tmp_path / "heads.ts"
    torch.jit.save(torch.jit.script(module), str(path))
    model = load(cache_dir, str(path), backend="torch", inputs=[TensorSpec("INPUT0", "FP32", (-1, 6))])
    assert model.platform == "pytorch_libtorch" and model.max_batch_size == 32
    assert model.outputs == [TensorSpec("OUTPUT0", "FP32", (-1, 4)), TensorSpec("OUTPUT1", "FP64", (-1,))]
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    out = model.create_instance(0).run({"INPUT0": x}, ["OUTPUT0", "OUTPUT1"]).outputs
    with torch.no_grad():
        want0, want1 = module(torch.from_numpy(x))
    np.testing.assert_allclose(out["OUTPUT0"], want0.numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["OUTPUT1"], want1.numpy(), rtol=1e-12)


def test_read_only_inputs_are_not_written(cache_dir: Path) -> None:
    model = load(cache_dir, "identity", backend="torch")
    buf = np.arange(4, dtype=np.float32).tobytes()
    x = np.frombuffer(buf, np.float32).reshape(2, 2)  # as the protocol layer decodes
    out = model.create_instance(0).run({"INPUT0": x}, ["OUTPUT0"]).outputs["OUTPUT0"]
    np.testing.assert_array_equal(out, x)
    assert not np.shares_memory(out, x)


def test_instances_run_concurrently_on_threads(cache_dir: Path) -> None:
    model = load(cache_dir, "mlp", params={"hidden": 64, "threads": 1})
    instances = [model.create_instance(i) for i in range(2)]
    x = np.ones((4, 256), np.float32)
    expected = instances[0].run({"INPUT0": x}, ["OUTPUT0"]).outputs["OUTPUT0"]
    results: list[np.ndarray] = []

    def work(instance: Backend) -> None:
        for _ in range(20):
            results.append(instance.run({"INPUT0": x}, ["OUTPUT0"]).outputs["OUTPUT0"])

    threads = [threading.Thread(target=work, args=(i,)) for i in instances]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 40 and all(np.array_equal(r, expected) for r in results)
    assert instances[0].memory_bytes() == {}


def test_bytes_that_are_not_utf8_are_refused(cache_dir: Path) -> None:
    model = load(cache_dir, "identity", params={"datatype": "BYTES"})
    data = np.array([[b"ok", b"\xff\xfe"]], dtype=object)
    with pytest.raises(InvalidInput, match=r"INPUT0.*element 1.*UTF-8"):
        model.create_instance(0).run({"INPUT0": data}, ["OUTPUT0"])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kw", "pattern"),
    [
        ({"source": "resnet50"}, r"'resnet50' is neither a built-in model \(identity, mlp"),
        ({"source": "/nonexistent/model.onnx"}, r"model file '/nonexistent/model.onnx' does not exist"),
        ({"source": "mlp", "params": {"widht": 3}}, r"no parameter\(s\) widht; it accepts: hidden"),
        ({"source": "mlp", "backend": "tensorrt"}, r"unknown backend 'tensorrt'"),
        ({"source": "mlp", "device": "gpu"}, r"unknown device 'gpu'"),
        ({"source": "mlp", "params": {"threads": 0}}, r"threads=0; expected an integer >= 1"),
        ({"source": "mlp", "params": {"torch_mode": "eager"}}, r"torch_mode applies to the torch"),
        (
            {"source": "mlp", "backend": "torch", "params": {"torch_mode": "jit"}},
            r"torch_mode='jit'; expected one of eager, torchscript",
        ),
        (
            {"source": "mlp", "inputs": [TensorSpec("IN", "FP32", (-1, 256))]},
            r"inputs given as \['IN'\], but the model's inputs are \['INPUT0'\]",
        ),
        (
            {"source": "mlp", "inputs": [TensorSpec("INPUT0", "FP16", (-1, 256))]},
            r"does not fit the model's INPUT0 FP32\[-1,256\]",
        ),
    ],
)
def test_bad_sources_name_the_problem(cache_dir: Path, kw: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ModelLoadError, match=pattern):
        load(cache_dir, **kw)


def test_bad_files_name_the_problem(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ModelLoadError, match=r"extension \.bin; expected \.onnx or a TorchScript"):
        load(cache_dir, str(tmp_path / "model.bin"))
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match=r"cannot load .*broken.onnx' as an ONNX model"):
        load(cache_dir, str(tmp_path / "broken.onnx"))
    onnx_file = write_onnx(tmp_path / "tiny.onnx", "N")
    with pytest.raises(ModelLoadError, match=r"ONNX files are served by the onnx backend"):
        load(cache_dir, str(onnx_file), backend="torch")
    with pytest.raises(ModelLoadError, match=r"apply to built-in models only"):
        load(cache_dir, str(onnx_file), params={"sleep_ms": 1})
    torch.save(TwoHeads().state_dict(), tmp_path / "weights.pth")
    with pytest.raises(ModelLoadError, match=r"carries no input names or shapes"):
        load(cache_dir, str(tmp_path / "weights.pth"), backend="torch")
    with pytest.raises(ModelLoadError, match=r"cannot load .* as TorchScript .*torch.save"):
        load(
            cache_dir,
            str(tmp_path / "weights.pth"),
            backend="torch",
            inputs=[TensorSpec("INPUT0", "FP32", (-1, 6))],
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_says_so(cache_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"device 'cuda' requested, but torch .* cannot use"):
        load(cache_dir, "mlp", backend="torch", device="cuda")
    with pytest.raises(ModelLoadError, match=r"(no|could not start its) CUDA execution provider"):
        load(cache_dir, "mlp", backend="onnx", device="cuda")


# --------------------------------------------------------------------------- profiling


def run_on_other_thread(instance: Backend, inputs: dict[str, np.ndarray], times: int) -> int:
    """Runs `times` batches on a new thread; returns that thread's native id."""
    ident: list[int] = []

    def work() -> None:
        ident.append(threading.get_native_id())
        for _ in range(times):
            instance.run(inputs, ["OUTPUT0"])

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return ident[0]


def test_torch_profile_records_runs_on_other_threads(cache_dir: Path, tmp_path: Path) -> None:
    instance = load(cache_dir, "mlp", backend="torch", params={"hidden": 64}).create_instance(0)
    instance.start_profile(tmp_path, "window")
    tid = run_on_other_thread(instance, {"INPUT0": np.ones((2, 256), np.float32)}, 3)
    result = instance.stop_profile()
    assert result.batches == 3 and result.tool == "torch.profiler"
    events = json.loads(result.trace_path.read_text())["traceEvents"]
    assert result.trace_path.name == "window.trace.json"
    batches = [e for e in events if e.get("name") == "modelsoak.batch"]
    assert len(batches) == 3 and all(e["tid"] == tid for e in batches)
    assert any(e.get("name") == "aten::linear" and e["tid"] == tid for e in events)
    assert result.summary_path is not None
    summary = result.summary_path.read_text()
    assert "CPU time" in summary and "aten::linear" in summary
    with pytest.raises(RuntimeError, match="no torch profile"):
        instance.stop_profile()


def test_torch_profiles_of_two_instances_at_once(cache_dir: Path, tmp_path: Path) -> None:
    # What the server does: a window per instance, runs on several threads.
    model = load(cache_dir, "mlp", backend="torch", params={"hidden": 64})
    first, second = model.create_instance(0), model.create_instance(1)
    first.start_profile(tmp_path, "first")
    second.start_profile(tmp_path, "second")
    inputs = {"INPUT0": np.ones((2, 256), np.float32)}
    threads = [
        threading.Thread(target=run_on_other_thread, args=(inst, inputs, n))
        for inst, n in ((first, 2), (second, 3))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [first.stop_profile().batches, second.stop_profile().batches] == [2, 3]
    for label, n in (("first", 2), ("second", 3)):
        events = json.loads((tmp_path / f"{label}.trace.json").read_text())["traceEvents"]
        assert sum(e.get("name") == "modelsoak.batch" for e in events) == n
    first.run(inputs, ["OUTPUT0"])  # and runs unprofiled afterwards


def test_onnx_profile_records_runs_on_other_threads(cache_dir: Path, tmp_path: Path) -> None:
    instance = load(cache_dir, "mlp", params={"hidden": 64}).create_instance(0)
    instance.start_profile(tmp_path, "ort")
    run_on_other_thread(instance, {"INPUT0": np.ones((2, 256), np.float32)}, 3)
    result = instance.stop_profile()
    assert result.batches == 3 and result.tool == "onnxruntime"
    events = json.loads(result.trace_path.read_text())
    assert result.trace_path.name == "ort.trace.json"
    assert sum(e.get("name") == "model_run" for e in events) == 3
    assert result.summary_path is not None and "Gemm" in result.summary_path.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # After the window the instance runs on its ordinary session again.
    instance.run({"INPUT0": np.ones((1, 256), np.float32)}, ["OUTPUT0"])


# --------------------------------------------------------------------------- CUDA


def _skip_without_ort_cuda(backend: str) -> None:
    """The onnx cases of a CUDA test need onnxruntime-gpu besides a GPU: say so, not pass."""
    if backend == "onnx":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip("onnxruntime has no CUDA execution provider (install onnxruntime-gpu)")


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_cuda_phases_are_timed_with_events(cache_dir: Path, backend: str) -> None:
    _skip_without_ort_cuda(backend)
    model = load(cache_dir, "mlp", backend=backend, device="cuda")
    cpu = load(cache_dir, "mlp", backend=backend)
    x = np.random.default_rng(2).standard_normal((8, 256)).astype(np.float32)
    instance = model.create_instance(0)
    result = instance.run({"INPUT0": x}, ["OUTPUT0"])
    assert result.times.clock == "cuda_events"
    assert min(result.times.h2d_ns, result.times.compute_ns, result.times.d2h_ns) > 0
    want = cpu.create_instance(0).run({"INPUT0": x}, ["OUTPUT0"]).outputs["OUTPUT0"]
    np.testing.assert_allclose(result.outputs["OUTPUT0"], want, rtol=1e-2, atol=1e-3)


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("datatype", ["FP16", "BF16", "INT64", "BOOL"])
def test_cuda_io_binding_round_trips(cache_dir: Path, datatype: str, backend: str) -> None:
    import ml_dtypes

    _skip_without_ort_cuda(backend)
    values = np.array([[0.0, -0.0, 1.5], [-2.25, 7.0, 1.0]], np.float32)
    numpy_type = {"FP16": np.float16, "BF16": ml_dtypes.bfloat16, "INT64": np.int64, "BOOL": np.bool_}[
        datatype
    ]
    data = values.astype(numpy_type)
    model = load(
        cache_dir, "identity", backend=backend, device="cuda", params={"datatype": datatype, "dims": [3]}
    )
    out = model.create_instance(0).run({"INPUT0": data}, ["OUTPUT0"]).outputs["OUTPUT0"]
    assert out.dtype == data.dtype and out.tobytes() == data.tobytes()


@pytest.mark.gpu
@CUDA
def test_cuda_profile_sorts_by_cuda_time(cache_dir: Path, tmp_path: Path) -> None:
    instance = load(cache_dir, "mlp", backend="torch", device="cuda").create_instance(0)
    instance.start_profile(tmp_path, "gpu")
    run_on_other_thread(instance, {"INPUT0": np.ones((8, 256), np.float32)}, 2)
    result = instance.stop_profile()
    assert result.summary_path is not None
    assert "CUDA time" in result.summary_path.read_text()
    assert "torch_cuda_allocated_bytes" in instance.memory_bytes()
