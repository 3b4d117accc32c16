"""Built-in models: every one loads and runs on both backends, identity round-trips
every datatype, ONNX and torch agree, exports are cached and deterministic, and
the sleep and leaky side effects do what they say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import psutil
import pytest
import torch

from server.backends import DATATYPES, ModelLoadError, ModelSource, PreparedModel, prepare_model
from server.builtin import (
    BUILTIN_MODELS,
    LeakEffect,
    describe_builtin_models,
    file_sha256,
    list_builtin_models,
    release_leaked,
)

NAMES = ["identity", "mlp", "sleep", "leaky", "resnet18"]
BACKENDS = ["onnx", "torch"]
MiB = 1 << 20


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One directory per test session, shared by the test modules: resnet18 is
    # exported once.
    return tmp_path_factory.getbasetemp() / "modelsoak-models"


def prepare(cache_dir: Path, source: str, backend: str = "onnx", **params: object) -> PreparedModel:
    return prepare_model(
        ModelSource(source, source, backend=backend, params=dict(params)), cache_dir=cache_dir
    )


def zeros_for(model: PreparedModel, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for spec in model.inputs:
        shape = [batch] + [3 if d < 0 else d for d in spec.shape[1:]]
        out[spec.name] = rng.standard_normal(shape).astype(DATATYPES[spec.datatype].numpy)
    return out


def test_listing_names_every_builtin() -> None:
    listed = dict(list_builtin_models())
    assert sorted(listed) == sorted(NAMES)
    assert all(len(text) > 40 for text in listed.values())
    text = describe_builtin_models()
    assert all(name in text for name in NAMES)
    assert "sleep_ms=10.0" in text


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_every_builtin_loads_and_runs_a_batch(cache_dir: Path, name: str, backend: str) -> None:
    model = prepare(cache_dir, name, backend, **({"leak_bytes": 16} if name == "leaky" else {}))
    assert model.platform == ("onnxruntime_onnx" if backend == "onnx" else "pytorch_libtorch")
    assert model.max_batch_size > 0 and len(model.sha256) == 64
    assert model.description == BUILTIN_MODELS[name].description
    batch = 1 if name == "resnet18" else 2
    inputs = zeros_for(model, batch)
    result = model.create_instance(0).run(inputs, [model.outputs[0].name], n_requests=batch)
    out = result.outputs[model.outputs[0].name]
    assert out.shape[0] == batch and out.dtype == np.float32
    assert result.times.clock == "perf_counter" and result.times.compute_ns > 0
    if name in ("identity", "sleep", "leaky"):
        np.testing.assert_array_equal(out, inputs["INPUT0"])
    release_leaked()


def identity_data(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        items = [b"", b"abc", "é ✓".encode(), b"nul\x00inside", b"x" * 300, b"\x7f"]
        return np.array(items, dtype=object).reshape(2, 3)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    dtype = DATATYPES[datatype].numpy
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max, 0], [1, info.max - 1, info.min + 1]], dtype=dtype)
    values = [[0.0, -0.0, 1.5], [-2.25, float("inf"), 65504.0]]
    return np.array(values, dtype=np.float32).astype(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "datatype", ["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BF16", "BYTES"]
)
def test_identity_round_trips_every_datatype(cache_dir: Path, datatype: str, backend: str) -> None:
    if datatype == "BYTES" and backend == "torch":
        with pytest.raises(ModelLoadError, match=r"torch backend cannot serve BYTES.*backend onnx"):
            prepare(cache_dir, "identity", backend, datatype="BYTES")
        return
    model = prepare(cache_dir, "identity", backend, datatype=datatype, dims=[3])
    assert model.inputs[0].datatype == datatype and model.inputs[0].shape == (-1, 3)
    data = identity_data(datatype)
    out = model.create_instance(0).run({"INPUT0": data}, ["OUTPUT0"]).outputs["OUTPUT0"]
    assert out.dtype == data.dtype and out.shape == data.shape
    if datatype == "BYTES":
        assert out.tolist() == data.tolist()
    else:  # bit-exact: compare the bytes (sign of -0.0 and BF16 bits included)
        assert out.tobytes() == data.tobytes()
    if datatype == "BF16":
        assert out.dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize("name", ["mlp", "resnet18"])
def test_onnx_and_torch_agree(cache_dir: Path, name: str) -> None:
    inputs = zeros_for(prepare(cache_dir, name), 2 if name == "resnet18" else 8)
    outs = {}
    for backend in BACKENDS:
        model = prepare(cache_dir, name, backend)
        outs[backend] = model.create_instance(0).run(inputs, ["OUTPUT0"]).outputs["OUTPUT0"]
    scale = float(np.abs(outs["torch"]).max())
    assert scale > 0  # the weights are not degenerate
    np.testing.assert_allclose(outs["onnx"], outs["torch"], rtol=1e-3, atol=1e-4 * scale)


def test_torchscript_mode_matches_eager(cache_dir: Path) -> None:
    inputs = zeros_for(prepare(cache_dir, "mlp"), 4)
    eager = prepare(cache_dir, "mlp", "torch").create_instance(0)
    scripted_model = prepare(cache_dir, "mlp", "torch", torch_mode="torchscript")
    assert any(p.suffix == ".pt" for p in cache_dir.iterdir())
    scripted = scripted_model.create_instance(0)
    np.testing.assert_allclose(
        scripted.run(inputs, ["OUTPUT0"]).outputs["OUTPUT0"],
        eager.run(inputs, ["OUTPUT0"]).outputs["OUTPUT0"],
        rtol=1e-5,
    )


def test_export_is_cached_and_deterministic(cache_dir: Path, tmp_path: Path) -> None:
    built = BUILTIN_MODELS["mlp"].build({"hidden": 64, "layers": 2})
    first = built.onnx_path(cache_dir)
    stamp = first.stat().st_mtime_ns
    again = prepare(cache_dir, "mlp", hidden=64, layers=2)
    assert first.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert again.sha256 == file_sha256(first)
    fresh = BUILTIN_MODELS["mlp"].build({"hidden": 64, "layers": 2}).onnx_path(tmp_path)
    assert fresh.name == first.name and file_sha256(fresh) == file_sha256(first)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert fresh.stat().st_mode & 0o777 == 0o644
    other = BUILTIN_MODELS["mlp"].build({"hidden": 32, "layers": 2}).onnx_path(tmp_path)
    assert other.name != first.name


def test_export_is_the_same_in_another_process(cache_dir: Path, tmp_path: Path) -> None:
    here = BUILTIN_MODELS["mlp"].build({"hidden": 64, "layers": 2}).onnx_path(cache_dir)
    code = (
        "import sys; from pathlib import Path; from server.builtin import BUILTIN_MODELS; "
        "print(BUILTIN_MODELS['mlp'].build({'hidden': 64, 'layers': 2})"
        ".onnx_path(Path(sys.argv[1])))"
    )
    root = Path(__file__).resolve().parent.parent
    out = (
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], cwd=root, check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert file_sha256(Path(out)) == file_sha256(here)


def test_building_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    BUILTIN_MODELS["mlp"].build({"hidden": 8, "layers": 1}).module()
    assert torch.equal(torch.rand(3), expected)


def test_parameters_are_checked_and_converted() -> None:
    with pytest.raises(ModelLoadError, match=r"no parameter\(s\) width.*hidden \(default 1024\)"):
        BUILTIN_MODELS["mlp"].resolve({"width": 3})
    with pytest.raises(ModelLoadError, match=r"datatype='FP8' is invalid.*BF16"):
        BUILTIN_MODELS["identity"].resolve({"datatype": "FP8"})
    with pytest.raises(ModelLoadError, match="dims"):
        BUILTIN_MODELS["identity"].resolve({"dims": [0]})
    params = BUILTIN_MODELS["sleep"].resolve({"sleep_ms": "2.5", "dims": "3,224,224", "datatype": "fp16"})
    assert params == {"datatype": "FP16", "dims": [3, 224, 224], "sleep_ms": 2.5, "per_sample_ms": 0.0}
    assert BUILTIN_MODELS["resnet18"].resolve({}) == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_sleep_compute_phase_holds_the_sleep(cache_dir: Path, backend: str) -> None:
    model = prepare(cache_dir, "sleep", backend, sleep_ms=20.0, per_sample_ms=5.0)
    instance = model.create_instance(0)
    inputs = {"INPUT0": np.ones((4, 2), np.float32)}
    times = instance.run(inputs, ["OUTPUT0"], n_requests=2).times
    # A lower bound, not a timing assertion: time.sleep never returns early.
    assert times.compute_ns >= (20 + 5 * 4) * 1_000_000


@pytest.mark.parametrize("backend", BACKENDS)
def test_leaky_grows_rss_by_leak_bytes_per_request(cache_dir: Path, backend: str) -> None:
    leak = 8 * MiB
    model = prepare(cache_dir, "leaky", backend, leak_bytes=leak)
    instance = model.create_instance(0)
    inputs = {"INPUT0": np.ones((2, 2), np.float32)}
    process = psutil.Process(os.getpid())
    before = process.memory_info().rss
    for _ in range(4):
        instance.run(inputs, ["OUTPUT0"], n_requests=2)  # 8 requests in all
    grown = process.memory_info().rss - before
    assert grown >= 0.9 * 8 * leak, f"RSS grew {grown / MiB:.1f} MiB, expected ~64 MiB"
    effect = getattr(instance, "effect", None)
    assert isinstance(effect, LeakEffect) and effect.kept_bytes == 8 * leak
    assert release_leaked() >= 8 * leak
    assert effect.kept_bytes == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")
def test_leaky_on_cuda_grows_torch_allocated(cache_dir: Path) -> None:
    model = prepare_model(
        ModelSource("leaky", "leaky", backend="torch", device="cuda", params={"leak_bytes": 4 * MiB}),
        cache_dir=cache_dir,
    )
    instance = model.create_instance(0)
    before = torch.cuda.memory_allocated()
    instance.run({"INPUT0": np.ones((2, 2), np.float32)}, ["OUTPUT0"], n_requests=3)
    assert torch.cuda.memory_allocated() - before >= 3 * 4 * MiB
    assert instance.memory_bytes()["torch_cuda_allocated_bytes"] >= 3 * 4 * MiB
    release_leaked()
    assert torch.cuda.memory_allocated() - before < 4 * MiB
