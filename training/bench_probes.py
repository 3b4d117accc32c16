"""What `modelsoak-train bench` samples beside the steps: memory (process RSS, or
torch's CUDA allocator), GPU utilisation and power through NVML, model FLOPs per
sample, and the device's peak FLOP/s for MFU."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

# Dense peak TFLOP/s (no sparsity) from the vendors' data sheets, by the name
# NVML / torch report. Matched by substring, longest key first.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "A10": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "V100": {"fp16": 125.0, "fp32": 15.7},
    "T4": {"fp16": 65.0, "fp32": 8.1},
}


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The table's peak for a device name and precision (bf16, fp16, tf32, fp32), or None."""
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_TFLOPS[key].get(precision)
    return None


def flops_per_sample(step: Callable[[], Any], batch: int) -> float:
    """FLOPs of one training step (forward and backward) per sample, counted by
    torch's FlopCounterMode while `step` runs once."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops()) / max(1, batch)


@dataclass
class Series:
    """Samples of one quantity over time (seconds since the run's origin)."""

    t: list[float] = field(default_factory=list)
    v: list[float] = field(default_factory=list)

    def window(self, t0: float, t1: float) -> np.ndarray:
        # The sampler thread appends to t, then to v, while this runs: read both at
        # one length so a sample half-written is left for the next window.
        n = min(len(self.t), len(self.v))
        t = np.asarray(self.t[:n])
        return np.asarray(self.v[:n])[(t >= t0) & (t <= t1)]


class Sampler:
    """A daemon thread reading memory (and the GPU through NVML, where there is
    one) every `interval_s`; the training loop never waits for it."""

    def __init__(self, device: Any, origin_ns: int, interval_s: float = 0.1) -> None:
        import torch

        self.cuda = torch.device(device).type == "cuda"
        self.origin_ns = origin_ns
        self.interval_s = interval_s
        self.rss = Series()
        self.cuda_allocated = Series()
        self.cuda_reserved = Series()
        self.gpu_util = Series()
        self.gpu_power_w = Series()
        self.gpu_reason = "" if self.cuda else "no GPU"
        self._proc = psutil.Process()
        self._nvml: Any = None
        self._handle: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self.device = torch.device(device)
        if self.cuda:
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self.device = torch.device("cuda", index)
            self._open_nvml(index)

    def _open_nvml(self, index: int) -> None:
        import torch

        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # no library, no driver: say why instead of inventing zeros
            self.gpu_reason = f"NVML unavailable: {exc} (pip install nvidia-ml-py)"
            return
        # NVML numbers every GPU of the host, CUDA only the visible ones: find ours by UUID.
        try:
            uuid = f"GPU-{torch.cuda.get_device_properties(index).uuid}"
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        except Exception:
            try:
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            except Exception as exc:
                self.gpu_reason = f"NVML has no handle for CUDA device {index}: {exc}"

    def now(self) -> float:
        return (time.perf_counter_ns() - self.origin_ns) / 1e9

    def sample(self) -> None:
        t = self.now()
        self.rss.t.append(t)
        self.rss.v.append(float(self._proc.memory_info().rss))
        if self.cuda:
            import torch

            self.cuda_allocated.t.append(t)
            # this thread's current device is not the loop's: name it
            self.cuda_allocated.v.append(float(torch.cuda.memory_allocated(self.device)))
            self.cuda_reserved.t.append(t)
            self.cuda_reserved.v.append(float(torch.cuda.memory_reserved(self.device)))
        if self._handle is not None:
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            self.gpu_util.t.append(t)
            self.gpu_util.v.append(util.gpu / 100.0)
            self.gpu_power_w.t.append(t)
            self.gpu_power_w.v.append(self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()
        if self._nvml is not None:
            self._nvml.nvmlShutdown()


def memory_limit_bytes(cuda: bool) -> float:
    """What peak memory is measured against: the GPU's memory, or the host's."""
    if cuda:
        import torch

        return float(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return float(psutil.virtual_memory().total)
