"""ONNX Runtime backend: CPU execution provider, or CUDA with IO binding.

On CUDA with a CUDA-enabled torch, each instance owns a torch CUDA stream that
ONNX Runtime computes on (`user_compute_stream`); inputs are copied into torch
tensors on that stream and bound by pointer, outputs copied back on it, and the
three phases timed with CUDA events read after the stream is synchronised.
Without torch CUDA the phases are synchronous and timed with perf_counter.

What ONNX Runtime's Python API does not do for us:
- BF16: numpy has no bfloat16, so `session.run` rejects ml_dtypes.bfloat16
  arrays and OrtValue.numpy() cannot return bfloat16. We feed OrtValues made
  from a uint16 view with the BF16 element type, and read outputs' bytes.
- BYTES: ORT turns every element of an object array into `str(element)`, so
  b"ab" would arrive as "b'ab'". We decode UTF-8 to str before the run and
  encode after; bytes that are not UTF-8 cannot pass through ORT's Python API.
"""

from __future__ import annotations

import ctypes
import functools
import json
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnxruntime as ort

from server.backends.base import DATATYPES, ONNX_BF16, ModelLoadError, datatype_of_ort
from server.errors import InvalidInput
from server.types import (
    PLATFORM_ONNX,
    Backend,
    ExecutionResult,
    PhaseTimes,
    ProfileResult,
    SideEffect,
    TensorSpec,
)

CUDA_EP = "CUDAExecutionProvider"
_NUMPY_OF_ONNX = {d.onnx: d.numpy for d in DATATYPES.values()}


def check_cuda(device: str) -> None:
    providers = ort.get_available_providers()
    if CUDA_EP not in providers:
        raise ModelLoadError(
            f"device {device!r} requested, but onnxruntime {ort.__version__} has no CUDA "
            f"execution provider (available: {', '.join(providers)}); install onnxruntime-gpu "
            "(pip install 'modelsoak[gpu]') on a machine with an NVIDIA GPU"
        )
    # onnxruntime-gpu lists the CUDA EP even without a GPU or CUDA libraries, and
    # then quietly runs on CPU: try it on a one-node graph.
    if not _cuda_ep_starts(int(device.split(":")[1]) if ":" in device else 0):
        raise ModelLoadError(
            f"device {device!r} requested, but ONNX Runtime could not start its CUDA "
            "execution provider (no GPU, or CUDA / cuDNN libraries missing)"
        )


@functools.cache
def _cuda_ep_starts(device_id: int) -> bool:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(),
            opts,
            providers=[(CUDA_EP, {"device_id": str(device_id)}), "CPUExecutionProvider"],
        )
    except Exception:
        return False
    return CUDA_EP in sess.get_providers()


def inspect_onnx(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX file as ONNX Runtime sees them; symbolic or
    unknown dims become -1."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"cannot load {str(path)!r} as an ONNX model: {exc}") from exc
    return (
        [_spec(a, "input") for a in sess.get_inputs()],
        [_spec(a, "output") for a in sess.get_outputs()],
    )


def _spec(arg: Any, kind: str) -> TensorSpec:
    where = f"ONNX {kind} {arg.name!r}"
    if arg.shape is None:
        raise ModelLoadError(f"{where} has unknown rank; modelsoak needs ranked tensors")
    dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype_of_ort(arg.type, where), dims)


def _torch_cuda() -> Any:
    """torch, if it can drive CUDA here; else None (then phases use perf_counter)."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


@dataclass
class _Profile:
    session: ort.InferenceSession
    out_dir: Path
    label: str
    batches: int = 0


class OnnxBackend(Backend):
    kind = "onnx"
    platform = PLATFORM_ONNX

    def __init__(
        self,
        path: Path,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        device: str = "cpu",
        threads: int | None = None,
        effect: SideEffect | None = None,
    ) -> None:
        self.path = path
        self.device = device
        self.inputs = inputs
        self.outputs = outputs
        self.threads = threads
        self.effect = effect
        self._types = {s.name: DATATYPES[s.datatype] for s in inputs + outputs}
        self._input_names = {s.name for s in inputs}
        self._output_names = {s.name for s in outputs}
        self._has_bf16 = any(s.datatype == "BF16" for s in inputs + outputs)
        self._has_bytes = any(s.datatype == "BYTES" for s in inputs + outputs)
        # Strings never go to the GPU through ORT's Python API: they run host-side.
        self._on_host = not device.startswith("cuda") or self._has_bytes
        if self._has_bf16 and self._has_bytes:
            raise ModelLoadError(
                f"{path.name}: mixes BF16 and BYTES tensors, which ONNX Runtime's Python "
                "API cannot feed in one run (BF16 needs OrtValues, BYTES needs numpy)"
            )
        self._device_id = int(device.split(":")[1]) if ":" in device else 0
        self._torch = _torch_cuda() if device.startswith("cuda") else None
        self._stream = self._torch.cuda.Stream(device=f"cuda:{self._device_id}") if self._torch else None
        self._lock = threading.Lock()
        self._profile: _Profile | None = None
        self._session = self._make_session()
        # The plain session whose inner run can be called directly (None when the
        # installed onnxruntime has no such inner object).
        self._checked_run = self._session if hasattr(self._session, "_sess") else None

    # ------------------------------------------------------------------ sessions

    def _make_session(self, profile_prefix: str | None = None) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            cuda_opts: dict[str, str] = {"device_id": str(self._device_id)}
            if self._stream is not None:
                cuda_opts["has_user_compute_stream"] = "1"
                cuda_opts["user_compute_stream"] = str(self._stream.cuda_stream)
            providers.insert(0, (CUDA_EP, cuda_opts))
        try:
            sess = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"ONNX Runtime cannot load {str(self.path)!r}: {exc}") from exc
        if self.device.startswith("cuda") and CUDA_EP not in sess.get_providers():
            # ORT falls back to CPU silently when the CUDA EP fails to start.
            raise ModelLoadError(
                f"ONNX Runtime could not start its CUDA execution provider for {self.path.name} "
                "(CUDA or cuDNN libraries missing, or no GPU); it would run on CPU"
            )
        return sess

    # ------------------------------------------------------------------ running

    def run(
        self, inputs: dict[str, np.ndarray], output_names: Sequence[str], n_requests: int = 1
    ) -> ExecutionResult:
        names = output_names if isinstance(output_names, list) else list(output_names)
        if inputs.keys() != self._input_names or not self._output_names.issuperset(names):
            self._check_names(inputs, names)
        batch = _batch_size(inputs) if self.effect is not None else 0
        with self._lock:
            sess = self._profile.session if self._profile else self._session
            if self._on_host:
                result = self._run_host(sess, inputs, names, n_requests, batch)
            elif self._stream is not None:
                result = self._run_cuda_events(sess, inputs, names, n_requests, batch)
            else:
                result = self._run_cuda_sync(sess, inputs, names, n_requests, batch)
            if self._profile:
                self._profile.batches += 1
        return result

    def _check_names(self, inputs: dict[str, np.ndarray], names: list[str]) -> None:
        if inputs.keys() != self._input_names:
            raise InvalidInput(f"inputs {sorted(inputs)} given; the model takes {sorted(self._input_names)}")
        unknown = [n for n in names if n not in self._output_names]
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; the model has {[s.name for s in self.outputs]}")

    def _effect(self, n_requests: int, batch: int) -> None:
        if self.effect is not None:
            self.effect(n_requests, batch)

    def _run_host(
        self,
        sess: ort.InferenceSession,
        inputs: dict[str, np.ndarray],
        names: list[str],
        n_requests: int,
        batch: int,
    ) -> ExecutionResult:
        """CPU (or strings on any device): numpy in, numpy out; ORT moves data itself."""
        t0 = time.perf_counter_ns()
        plain = not (self._has_bf16 or self._has_bytes)
        feeds = inputs if plain else {k: self._host_feed(k, v) for k, v in inputs.items()}
        t1 = time.perf_counter_ns()
        if self._has_bf16:
            raw: list[Any] = sess.run_with_ort_values(names, feeds)
        elif plain and self._checked_run is sess:
            # The session's C++ run, skipping the Python wrapper's re-validation
            # of names this backend has checked already (~6 µs a call).
            raw = sess._sess.run(names, feeds, None)  # type: ignore[union-attr]
        else:
            raw = sess.run(names, feeds)
        self._effect(n_requests, batch)
        t2 = time.perf_counter_ns()
        if plain:
            outputs = dict(zip(names, raw, strict=True))
        else:
            outputs = {n: _to_numpy(v) for n, v in zip(names, raw, strict=True)}
        t3 = time.perf_counter_ns()
        return ExecutionResult(outputs, PhaseTimes(t1 - t0, t2 - t1, t3 - t2, "perf_counter"))

    def _host_feed(self, name: str, array: np.ndarray) -> Any:
        dtype = self._types[name]
        if dtype.name == "BYTES":
            return _bytes_to_str(name, array)
        if self._has_bf16:
            return _ortvalue(array, dtype.onnx)
        return array

    def _run_cuda_events(
        self,
        sess: ort.InferenceSession,
        inputs: dict[str, np.ndarray],
        names: list[str],
        n_requests: int,
        batch: int,
    ) -> ExecutionResult:
        torch, stream = self._torch, self._stream
        assert torch is not None and stream is not None
        from server.backends.torch import device_to_host, host_to_device, result_from_events

        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        binding = sess.io_binding()
        device = f"cuda:{self._device_id}"
        with torch.cuda.stream(stream):
            events[0].record(stream)
            on_device = {k: host_to_device(v, device) for k, v in inputs.items()}
            for k, t in on_device.items():
                binding.bind_input(
                    k, "cuda", self._device_id, self._types[k].onnx, tuple(t.shape), t.data_ptr()
                )
            for n in names:
                binding.bind_output(n, "cuda", self._device_id)
            events[1].record(stream)
            sess.run_with_iobinding(binding)
            self._effect(n_requests, batch)
            events[2].record(stream)
            produced = binding.get_outputs()
            host = [device_to_host(_torch_view(torch, v, device)) for v in produced]
            events[3].record(stream)
        stream.synchronize()
        outputs = {n: h() for n, h in zip(names, host, strict=True)}
        del on_device, produced  # kept alive until the stream is done with them
        return result_from_events(outputs, events)

    def _run_cuda_sync(
        self,
        sess: ort.InferenceSession,
        inputs: dict[str, np.ndarray],
        names: list[str],
        n_requests: int,
        batch: int,
    ) -> ExecutionResult:
        """CUDA without torch CUDA: synchronous copies, perf_counter around each phase."""
        binding = sess.io_binding()
        t0 = time.perf_counter_ns()
        for k, v in inputs.items():
            dtype = self._types[k]
            if dtype.name == "BF16":  # no numpy type: a CPU OrtValue that ORT copies itself
                binding.bind_ortvalue_input(k, _ortvalue(v, dtype.onnx))
            else:
                binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, "cuda", self._device_id))
        for n in names:
            on_host = self._types[n].name == "BF16"
            binding.bind_output(n, "cpu" if on_host else "cuda", 0 if on_host else self._device_id)
        t1 = time.perf_counter_ns()
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        self._effect(n_requests, batch)
        t2 = time.perf_counter_ns()
        outputs = {n: _to_numpy(v) for n, v in zip(names, binding.get_outputs(), strict=True)}
        t3 = time.perf_counter_ns()
        return ExecutionResult(outputs, PhaseTimes(t1 - t0, t2 - t1, t3 - t2, "perf_counter"))

    # ------------------------------------------------------------------ profiling

    def start_profile(self, out_dir: Path, label: str) -> None:
        """ORT can only profile a session created with profiling on: make one for
        the window (the first runs in it include that session's warm-up)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        session = self._make_session(profile_prefix=str(out_dir / f".{label}.ort"))
        with self._lock:
            if self._profile is not None:
                raise RuntimeError(f"{self.path.name}: a profile is already running")
            self._profile = _Profile(session, out_dir, label)

    def stop_profile(self) -> ProfileResult:
        with self._lock:  # waits for a run in flight on the profiling session
            prof, self._profile = self._profile, None
        if prof is None:
            raise RuntimeError(f"{self.path.name}: no profile is running")
        written = Path(prof.session.end_profiling())
        trace = prof.out_dir / f"{prof.label}.trace.json"
        shutil.move(written, trace)
        summary = prof.out_dir / f"{prof.label}.summary.txt"
        summary.write_text(_summarise(json.loads(trace.read_text()), prof.batches, self.device))
        return ProfileResult(trace, summary, prof.batches, "onnxruntime")

    def close(self) -> None:
        with self._lock:
            self._profile = None


# ---------------------------------------------------------------------- helpers


def _batch_size(inputs: dict[str, np.ndarray]) -> int:
    for v in inputs.values():
        return int(v.shape[0]) if v.ndim else 1
    return 1


def _ortvalue(array: np.ndarray, onnx_type: int) -> ort.OrtValue:
    if onnx_type == ONNX_BF16:
        view = np.ascontiguousarray(array).view(np.uint16)
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(view, onnx_type)
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))


def _to_numpy(value: Any) -> np.ndarray:
    """An ORT result (numpy array, or OrtValue on the host) as the numpy array
    the protocol layer expects (bfloat16 via ml_dtypes, BYTES as bytes)."""
    if isinstance(value, ort.OrtValue):
        if value.element_type() != ONNX_BF16:
            value = value.numpy()
        else:
            shape = tuple(value.shape())
            count = int(np.prod(shape))
            if count == 0:
                return np.empty(shape, ml_dtypes.bfloat16)
            raw = (ctypes.c_uint16 * count).from_address(value.data_ptr())
            bits = np.ctypeslib.as_array(raw).copy()  # ORT may reuse its buffer
            return bits.view(ml_dtypes.bfloat16).reshape(shape)
    if value.dtype == object:
        return _str_to_bytes(value)
    return value


def _bytes_to_str(name: str, array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat_in):
        if isinstance(item, str):
            flat_out[i] = item
            continue
        try:
            flat_out[i] = bytes(item).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"input {name!r} element {i}: ONNX Runtime's Python API passes BYTES as "
                f"text, so elements must be valid UTF-8; received {bytes(item)[:16]!r}: {exc}"
            ) from exc
    return out


def _str_to_bytes(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat_in):
        flat_out[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return out


def _torch_view(torch: Any, value: ort.OrtValue, device: str) -> Any:
    """A torch tensor over an OrtValue's CUDA memory (no copy), through the CUDA
    array interface; BF16 travels as uint16 (numpy typestrings have no bfloat16)."""
    shape = tuple(value.shape())
    bf16 = value.element_type() == ONNX_BF16
    dtype = np.dtype(np.uint16) if bf16 else _NUMPY_OF_ONNX[value.element_type()]
    if int(np.prod(shape)) == 0:  # no memory to point at
        tensor = torch.from_numpy(np.empty(shape, dtype)).to(device)
    else:
        holder = type(
            "CudaArray",
            (),
            {
                "__cuda_array_interface__": {
                    "shape": shape,
                    "typestr": dtype.str,
                    "data": (value.data_ptr(), False),
                    "version": 2,
                    "strides": None,
                }
            },
        )()
        tensor = torch.as_tensor(holder, device=device)
    return tensor.view(torch.bfloat16) if bf16 else tensor


def _summarise(events: list[dict[str, Any]], batches: int, device: str) -> str:
    """Per-operator totals of the kernel-time events in an ORT profile."""
    per_op: dict[str, list[float]] = defaultdict(list)
    runs: list[float] = []
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            per_op[ev.get("args", {}).get("op_name", "?")].append(float(ev.get("dur", 0)))
        elif ev.get("cat") == "Session" and ev.get("name") == "model_run":
            runs.append(float(ev.get("dur", 0)))
    total = sum(sum(v) for v in per_op.values()) or 1.0
    lines = [
        f"ONNX Runtime profile on {device}: {batches} batch(es), {len(runs)} model_run event(s), "
        f"{sum(runs) / 1000:.3f} ms in model_run; operator kernel times "
        "(host-side on CUDA: launches, not device time)",
        "",
        f"{'operator':<28}{'calls':>8}{'total ms':>12}{'avg us':>12}{'share':>8}",
    ]
    for op, durs in sorted(per_op.items(), key=lambda kv: -sum(kv[1])):
        lines.append(
            f"{op:<28}{len(durs):>8}{sum(durs) / 1000:>12.3f}"
            f"{sum(durs) / len(durs):>12.1f}{100 * sum(durs) / total:>7.1f}%"
        )
    return "\n".join(lines) + "\n"
