"""torch backend: an eager module or a TorchScript file, on CPU or one CUDA device.

CPU phases are timed with perf_counter_ns: h2d = numpy to tensors, compute =
forward (+ the model's side effect), d2h = tensors to numpy. On CUDA each
instance owns a stream; inputs go through pinned host memory with non-blocking
copies, and the phases are timed with CUDA events on the stream, read after it
is synchronised.

Profiling: torch.profiler records only the thread that started it (and threads
it spawns). torch >= 2.7 can record every thread (the experimental
`profile_all_threads`), but that is one process-wide window, while the server
profiles each instance separately and runs batches on many threads. So each
run in an instance's window is profiled on the thread making it (one at a
time: kineto allows one profiler per process), and the runs are merged.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import torch
from torch.autograd.profiler_util import EventList, FunctionEventAvg
from torch.profiler import ProfilerActivity, profile, record_function

from server.backends.base import DATATYPES, ModelLoadError
from server.errors import InvalidInput
from server.types import (
    PLATFORM_TORCH,
    Backend,
    ExecutionResult,
    PhaseTimes,
    ProfileResult,
    SideEffect,
    TensorSpec,
)

TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "BF16": torch.bfloat16,
}
for _name in ("UINT16", "UINT32", "UINT64"):  # torch >= 2.3, few operators
    if hasattr(torch, _name.lower()):
        TORCH_DTYPES[_name] = getattr(torch, _name.lower())
KSERVE_OF_TORCH = {v: k for k, v in TORCH_DTYPES.items()}


def check_cuda(device: str) -> None:
    if not torch.cuda.is_available():
        why = (
            "this torch build has no CUDA"
            if torch.version.cuda is None
            else f"built for CUDA {torch.version.cuda}, but no GPU or driver was found"
        )
        raise ModelLoadError(
            f"device {device!r} requested, but torch {torch.__version__} cannot use CUDA: {why}"
        )
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ModelLoadError(
            f"device {device!r} requested, but torch sees {torch.cuda.device_count()} CUDA device(s)"
        )


def load_torchscript(path: Path, device: str) -> torch.nn.Module:
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load {str(path)!r} as TorchScript (a file written by torch.jit.save); a "
            f"state dict or pickled module from torch.save cannot be served: {exc}"
        ) from exc
    return module.eval()


# ---------------------------------------------------------------------- conversions


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor over a numpy array (no copy when the array is writable)."""
    if array.dtype == object:
        raise InvalidInput("the torch backend cannot take BYTES tensors")
    if not array.flags.writeable or not array.flags.c_contiguous:
        # A read-only array is usually the request's protobuf bytes: an in-place
        # op in the model must not write into them, so copy.
        array = np.array(array, order="C", copy=True)
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A host tensor as numpy; bfloat16 as ml_dtypes.bfloat16 through its bits."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def host_to_device(array: np.ndarray, device: str) -> torch.Tensor:
    """Copy through pinned memory (torch caches pinned blocks), non-blocking on
    the current stream."""
    array = np.ascontiguousarray(array)
    bf16 = array.dtype == ml_dtypes.bfloat16
    bits = array.view(np.int16) if bf16 else array
    staging = torch.empty(bits.shape, dtype=TORCH_DTYPES[_kserve(bits.dtype)], pin_memory=True)
    np.copyto(staging.numpy(), bits)
    on_device = staging.to(device, non_blocking=True)
    return on_device.view(torch.bfloat16) if bf16 else on_device


def device_to_host(tensor: torch.Tensor) -> Callable[[], np.ndarray]:
    """Enqueue a non-blocking copy into pinned memory; call the result after the
    stream is synchronised to get the numpy array."""
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return lambda: to_numpy(host)


def result_from_events(outputs: dict[str, np.ndarray], events: list[Any]) -> ExecutionResult:
    """Phase times from four CUDA events (before h2d, compute, d2h, after), read
    after the stream was synchronised."""
    ns = [int(a.elapsed_time(b) * 1e6) for a, b in itertools.pairwise(events)]
    return ExecutionResult(outputs, PhaseTimes(ns[0], ns[1], ns[2], "cuda_events"))


def _kserve(dtype: np.dtype[Any]) -> str:
    for d in DATATYPES.values():
        if d.numpy == dtype:
            return d.name
    raise InvalidInput(f"numpy dtype {dtype} is not a KServe datatype")


# ---------------------------------------------------------------------- outputs


def _as_list(result: Any) -> list[torch.Tensor] | dict[str, torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return dict(result)
    if isinstance(result, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in result):
        return list(result)
    raise RuntimeError(
        f"the model returned {type(result).__name__}; expected a tensor, "
        "a tuple/list of tensors or a dict of name to tensor"
    )


def infer_outputs(path: Path, inputs: list[TensorSpec], device: str) -> list[TensorSpec]:
    """Output specs of a TorchScript file from two trial runs on zeros: -1 dims
    of the inputs as 1, then as 2; output dims that differ are -1."""
    module = load_torchscript(path, device)
    trials = []
    for size in (1, 2):
        args = [
            torch.zeros(
                [size if d < 0 else d for d in s.shape], dtype=TORCH_DTYPES[s.datatype], device=device
            )
            for s in inputs
        ]
        try:
            with torch.inference_mode():
                result = _as_list(module(*args))
        except Exception as exc:
            raise ModelLoadError(
                f"{path.name}: a trial run on zeros of {[s.describe() for s in inputs]} "
                f"failed, so its outputs cannot be inferred (give them explicitly): {exc}"
            ) from exc
        named = result if isinstance(result, dict) else {f"OUTPUT{i}": t for i, t in enumerate(result)}
        trials.append(named)
    specs = []
    for name, first in trials[0].items():
        second = trials[1][name]
        if first.dtype not in KSERVE_OF_TORCH:
            raise ModelLoadError(f"{path.name}: output {name} is {first.dtype}, not servable")
        dims = tuple(-1 if a != b else a for a, b in zip(first.shape, second.shape, strict=True))
        specs.append(TensorSpec(name, KSERVE_OF_TORCH[first.dtype], dims))
    return specs


# ---------------------------------------------------------------------- backend


class TorchBackend(Backend):
    kind = "torch"
    platform = PLATFORM_TORCH

    def __init__(
        self,
        module: torch.nn.Module,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        device: str = "cpu",
        threads: int | None = None,
        effect: SideEffect | None = None,
    ) -> None:
        if threads:
            # Process-wide in torch: the last model loaded with `threads` wins.
            torch.set_num_threads(threads)
        self.device = device
        self.inputs = inputs
        self.outputs = outputs
        self.effect = effect
        self.module = module.eval().to(device)
        self._stream: torch.cuda.Stream | None = None
        if device.startswith("cuda"):
            # The weights were copied on the default stream; the instance's own
            # stream is not ordered after it, so wait for them once here.
            torch.cuda.synchronize(device)
            self._stream = torch.cuda.Stream(device=device)
        self._profile: _Profile | None = None

    def run(
        self, inputs: dict[str, np.ndarray], output_names: Sequence[str], n_requests: int = 1
    ) -> ExecutionResult:
        missing = [s.name for s in self.inputs if s.name not in inputs]
        if missing:
            raise InvalidInput(f"missing input(s) {missing}; the model takes {[s.name for s in self.inputs]}")
        arrays = [inputs[s.name] for s in self.inputs]
        batch = int(arrays[0].shape[0]) if arrays and arrays[0].ndim else 1
        prof = self._profile
        if prof is None:
            return self._run(arrays, output_names, n_requests, batch)
        return prof.record(lambda: self._run(arrays, output_names, n_requests, batch))

    def _run(
        self, arrays: list[np.ndarray], names: Sequence[str], n_requests: int, batch: int
    ) -> ExecutionResult:
        if self._stream is not None:
            return self._run_cuda(self._stream, arrays, names, n_requests, batch)
        t0 = time.perf_counter_ns()
        tensors = [to_tensor(a) for a in arrays]
        t1 = time.perf_counter_ns()
        with torch.inference_mode():
            produced = self._name(self.module(*tensors), names)
            self._effect(n_requests, batch)
        t2 = time.perf_counter_ns()
        outputs = {n: to_numpy(t) for n, t in produced.items()}
        t3 = time.perf_counter_ns()
        return ExecutionResult(outputs, PhaseTimes(t1 - t0, t2 - t1, t3 - t2, "perf_counter"))

    def _run_cuda(
        self, stream: Any, arrays: list[np.ndarray], names: Sequence[str], n_requests: int, batch: int
    ) -> ExecutionResult:
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        with torch.cuda.stream(stream):
            events[0].record(stream)
            tensors = [host_to_device(a, self.device) for a in arrays]
            events[1].record(stream)
            with torch.inference_mode():
                produced = self._name(self.module(*tensors), names)
                self._effect(n_requests, batch)
            events[2].record(stream)
            pending = {n: device_to_host(t) for n, t in produced.items()}
            events[3].record(stream)
        stream.synchronize()
        return result_from_events({n: get() for n, get in pending.items()}, events)

    def _effect(self, n_requests: int, batch: int) -> None:
        if self.effect is not None:
            self.effect(n_requests, batch)

    def _name(self, result: Any, names: Sequence[str]) -> dict[str, torch.Tensor]:
        got = _as_list(result)
        if isinstance(got, list):
            if len(got) != len(self.outputs):
                raise RuntimeError(
                    f"the model returned {len(got)} tensor(s), but {len(self.outputs)} output(s) are declared"
                )
            got = {s.name: t for s, t in zip(self.outputs, got, strict=True)}
        unknown = [n for n in names if n not in got]
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; the model has {list(got)}")
        return {n: got[n] for n in names}

    # ------------------------------------------------------------------ profiling

    def start_profile(self, out_dir: Path, label: str) -> None:
        if self._profile is not None:
            raise RuntimeError(f"a torch profile ({self._profile.label}) is already running on this instance")
        out_dir.mkdir(parents=True, exist_ok=True)
        self._profile = _Profile(out_dir, label, cuda=self._stream is not None)

    def stop_profile(self) -> ProfileResult:
        prof, self._profile = self._profile, None
        if prof is None:
            raise RuntimeError("no torch profile is running on this instance")
        return prof.finish()

    def memory_bytes(self) -> dict[str, int]:
        if self._stream is None:
            return {}
        dev = torch.device(self.device)
        return {
            "torch_cuda_allocated_bytes": torch.cuda.memory_allocated(dev),
            "torch_cuda_reserved_bytes": torch.cuda.memory_reserved(dev),
            "torch_cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(dev),
        }

    def close(self) -> None:
        if self._profile is not None:
            self.stop_profile()
        self._stream = None


# kineto allows one active profiler per process: profiled runs take turns.
_PROFILER_LOCK = threading.Lock()


class _Profile:
    """One instance's profiling window. A torch profiler records only the thread
    that started it, and the server runs batches on many threads, so each run
    in the window gets a profiler of its own, on the thread making the run;
    the runs' traces and operator tables are merged when the window ends."""

    def __init__(self, out_dir: Path, label: str, cuda: bool) -> None:
        self.out_dir = out_dir
        self.label = label
        self.cuda = cuda
        self.activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self._runs: list[profile] = []
        self._closed = False
        self._lock = threading.Lock()

    def record(self, run: Callable[[], ExecutionResult]) -> ExecutionResult:
        with _PROFILER_LOCK, profile(activities=self.activities) as prof, record_function("modelsoak.batch"):
            result = run()
        with self._lock:
            if not self._closed:  # a run that ends after the window is left out
                self._runs.append(prof)
        return result

    def finish(self) -> ProfileResult:
        with self._lock:
            self._closed = True
            runs = list(self._runs)
        trace = self.out_dir / f"{self.label}.trace.json"
        trace.write_text(json.dumps({"traceEvents": _merged_events(runs)}))
        sort = "cuda_time_total" if self.cuda else "cpu_time_total"
        summary = self.out_dir / f"{self.label}.summary.txt"
        summary.write_text(
            f"torch.profiler, {len(runs)} batch(es), sorted by total "
            f"{'CUDA' if self.cuda else 'CPU'} time\n\n{_merged_table(runs, sort, self.cuda)}\n"
        )
        return ProfileResult(trace, summary, len(runs), "torch.profiler")


def _merged_events(runs: list[profile]) -> list[dict[str, Any]]:
    """The runs' Chrome-trace events on one timeline (kineto timestamps are
    absolute); metadata events that every run repeats are kept once."""
    events: list[dict[str, Any]] = []
    seen_meta: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for i, prof in enumerate(runs):
            part = Path(tmp) / f"run{i}.json"
            prof.export_chrome_trace(str(part))
            for ev in json.loads(part.read_text())["traceEvents"]:
                if ev.get("ph") == "M":
                    key = json.dumps(ev, sort_keys=True)
                    if key in seen_meta:
                        continue
                    seen_meta.add(key)
                events.append(ev)
    return events


def _merged_table(runs: list[profile], sort_by: str, cuda: bool) -> str:
    merged: dict[str, FunctionEventAvg] = {}
    for prof in runs:
        for avg in prof.key_averages():
            merged.setdefault(avg.key, FunctionEventAvg()).add(avg)
    if not merged:
        return "(no batch ran in the window)"
    table = EventList(list(merged.values()), use_device="cuda" if cuda else None)
    return str(table.table(sort_by=sort_by, row_limit=50))
