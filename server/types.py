"""Types shared by the server's parts: tensor specs, phase timings, the backend interface.

Everything here is free of heavy imports (no torch, no onnxruntime) so that the
load generator and the exporters can import it cheaply.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The platform strings of KServe / Triton model metadata, by our backend name.
PLATFORM_ONNX = "onnxruntime_onnx"
PLATFORM_TORCH = "pytorch_libtorch"
PLATFORMS = {"onnx": PLATFORM_ONNX, "torch": PLATFORM_TORCH}
# Streaming (token-generating) models, served by a generation engine, not a backend.
PLATFORM_GENERATIVE = "modelsoak_generative"
# Triton's ModelConfig `backend` field, by our backend name.
TRITON_BACKENDS = {"onnx": "onnxruntime", "torch": "pytorch"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model as the protocol shows it.

    `shape` is the full shape including the batch dimension, which is -1 for a
    batchable model; any other -1 is a variable-size dimension.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        return f"{self.name} {self.datatype}[{dims}]"


@dataclass
class PhaseTimes:
    """Time spent in each phase of one model execution, in nanoseconds.

    On CUDA these come from CUDA events recorded on the model's stream and read
    after the stream is synchronised; on CPU from `time.perf_counter_ns`.
    """

    h2d_ns: int = 0
    compute_ns: int = 0
    d2h_ns: int = 0
    # Where the numbers came from: "cuda_events" or "perf_counter".
    clock: str = "perf_counter"


@dataclass
class ExecutionResult:
    """What a backend returns for one batch."""

    outputs: dict[str, np.ndarray]
    times: PhaseTimes


# A host-side effect a built-in model runs inside the compute phase of every
# execution, given the number of requests in the batch and the batch size in
# samples (sleep, leak).
SideEffect = Callable[[int, int], None]


@dataclass
class ProfileResult:
    """Files written by one profiling window."""

    trace_path: Path
    summary_path: Path | None
    batches: int
    tool: str


class Backend(abc.ABC):
    """One instance of a model loaded in a framework, able to run a batch.

    Several instances of one model may run at the same time on different
    threads; each instance is used by one thread at a time.
    """

    #: "onnx" or "torch"
    kind: str
    #: "cpu" or "cuda"
    device: str
    #: the platform string of the KServe / Triton metadata, e.g. "onnxruntime_onnx"
    platform: str

    @abc.abstractmethod
    def run(
        self, inputs: dict[str, np.ndarray], output_names: Sequence[str], n_requests: int = 1
    ) -> ExecutionResult:
        """Run one batch. Inputs are host (numpy) arrays keyed by input name; the
        returned outputs are host arrays keyed by output name, restricted to
        `output_names`. `n_requests` is how many client requests the batch holds."""

    @abc.abstractmethod
    def start_profile(self, out_dir: Path, label: str) -> None:
        """Begin recording a profile of the following `run` calls (torch.profiler
        or ONNX Runtime's profiler), whichever thread makes them."""

    @abc.abstractmethod
    def stop_profile(self) -> ProfileResult:
        """End the profile begun by `start_profile`; write a Chrome trace (and a
        text summary sorted by device time, or CPU time without a GPU)."""

    def memory_bytes(self) -> dict[str, int]:
        """Device memory this instance's framework reports (e.g. torch CUDA
        allocated / reserved / peak). Empty on CPU."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release framework resources."""


@dataclass
class ModelInfo:
    """What the protocol layer needs to know about a served model."""

    name: str
    version: str
    platform: str
    backend: str
    device: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    instances: int
    max_queue_delay_us: int
    max_queue_size: int
    # sha256 of the model file (ONNX bytes, TorchScript file) or of the
    # built-in model's definition, for provenance in reports.
    sha256: str = ""
    source: str = ""
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    input_map: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    input_dtypes: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from server import dtypes

        # Looked up on every request: build once.
        self.input_map = {s.name: s for s in self.inputs}
        self.input_dtypes = {s.name: dtypes.lookup(s.datatype) for s in self.inputs}

    @property
    def batchable(self) -> bool:
        return self.max_batch_size > 0
