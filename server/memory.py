"""Memory and GPU probes, sampled in the background into a bounded time series.

Sources (values are floats; byte counts in bytes):
- rss_bytes, cpu_percent: this process, from psutil.
- torch_cuda_allocated_bytes / _reserved_bytes / _max_allocated_bytes: summed
  over the visible devices, only once torch has initialised CUDA (the sampler
  never imports torch or creates a CUDA context itself).
- gpu{i}_memory_used_bytes, gpu{i}_memory_total_bytes, gpu{i}_utilization_percent,
  gpu{i}_power_watts: NVML (nvidia-ml-py), when a driver and a GPU are present.
- whatever callables registered with `add_probe` return (e.g. a backend's
  `memory_bytes`).

The exporters and the leak detector read `latest()` and `series()` directly.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

Probe = Callable[[], Mapping[str, float]]


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    name: str


class _Nvml:
    """NVML handles, or the reason there are none."""

    def __init__(self) -> None:
        self.lib: Any = None
        self.handles: list[Any] = []
        self.gpus: list[GpuInfo] = []
        self.reason: str | None = None
        try:
            import pynvml
        except ImportError:
            self.reason = "no NVML: pynvml is not installed (pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self.reason = f"no NVIDIA driver: NVML could not start ({exc})"
            return
        if count == 0:
            self.reason = "NVML found no GPU"
            return
        self.lib = pynvml
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            self.handles.append(handle)
            self.gpus.append(
                GpuInfo(i, _text(pynvml.nvmlDeviceGetUUID(handle)), _text(pynvml.nvmlDeviceGetName(handle)))
            )

    def sample(self, out: dict[str, float]) -> None:
        nv = self.lib
        for i, handle in enumerate(self.handles):
            # Each query on its own: a GPU may not support power or utilisation.
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(handle)
                out[f"gpu{i}_memory_used_bytes"] = float(mem.used)
                out[f"gpu{i}_memory_total_bytes"] = float(mem.total)
            except nv.NVMLError:
                pass
            with contextlib.suppress(nv.NVMLError):
                out[f"gpu{i}_utilization_percent"] = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
            with contextlib.suppress(nv.NVMLError):
                out[f"gpu{i}_power_watts"] = nv.nvmlDeviceGetPowerUsage(handle) / 1000.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _torch_cuda(out: dict[str, float]) -> None:
    torch = sys.modules.get("torch")
    # Only read what exists: initialising CUDA here would cost a context's memory.
    if torch is None or not torch.cuda.is_initialized():
        return
    allocated = reserved = peak = 0
    for i in range(torch.cuda.device_count()):
        allocated += torch.cuda.memory_allocated(i)
        reserved += torch.cuda.memory_reserved(i)
        peak += torch.cuda.max_memory_allocated(i)
    out["torch_cuda_allocated_bytes"] = float(allocated)
    out["torch_cuda_reserved_bytes"] = float(reserved)
    out["torch_cuda_max_allocated_bytes"] = float(peak)


class MemorySampler:
    """Samples every `interval_s` on a daemon thread; keeps the last `max_samples`.

    Storage is a ring of numpy columns (one float64 per sample and source),
    so a day at 1 s costs under a megabyte per source, not a dict per sample.
    """

    def __init__(self, interval_s: float = 1.0, max_samples: int = 86400, nvml: bool = True) -> None:
        if interval_s <= 0 or max_samples < 1:
            raise ValueError("interval_s must be > 0 and max_samples >= 1")
        self.interval_s = interval_s
        self.max_samples = max_samples
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only sets the baseline
        self._nvml = _Nvml() if nvml else None
        self._probes: list[Probe] = []
        self._lock = threading.Lock()
        self._stored = threading.Condition(self._lock)  # notified after every sample
        self._times = np.full(max_samples, np.nan)
        self._columns: dict[str, np.ndarray] = {}
        self._count = 0  # samples taken in all; the ring holds the last max_samples
        self._latest: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    def start(self) -> MemorySampler:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="modelsoak-memory", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval_s))
            self._thread = None

    @property
    def running(self) -> bool:
        """Whether the sampling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def wait_for(self, samples: int, timeout_s: float) -> bool:
        """Block until `samples` samples have been taken since creation (False on timeout)."""
        with self._stored:
            return self._stored.wait_for(lambda: self._count >= samples, timeout_s)

    @property
    def taken(self) -> int:
        """Samples taken since creation (the ring keeps the last max_samples)."""
        with self._lock:
            return self._count

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval_s):
                return

    def add_probe(self, probe: Probe) -> None:
        """Also record what `probe()` returns at every sample (a failing probe is skipped)."""
        with self._lock:
            self._probes.append(probe)

    # ------------------------------------------------------------------ sampling

    def sample(self) -> dict[str, float]:
        """Take one sample now (the thread calls this); returns it."""
        values: dict[str, float] = {}
        try:
            values["rss_bytes"] = float(self._process.memory_info().rss)
            values["cpu_percent"] = float(self._process.cpu_percent(None))
        except psutil.Error:
            pass
        _torch_cuda(values)
        if self._nvml is not None and self._nvml.lib is not None:
            self._nvml.sample(values)
        with self._lock:
            probes = list(self._probes)
        for probe in probes:
            try:
                values.update({k: float(v) for k, v in probe().items()})
            except Exception:  # a probe must not stop the sampler
                continue
        self._store(time.time(), values)
        return values

    def _store(self, when: float, values: dict[str, float]) -> None:
        with self._lock:
            slot = self._count % self.max_samples
            self._times[slot] = when
            for key, value in values.items():
                column = self._columns.get(key)
                if column is None:
                    column = self._columns[key] = np.full(self.max_samples, np.nan)
                column[slot] = value
            for key, column in self._columns.items():
                if key not in values:
                    column[slot] = np.nan
            self._count += 1
            self._latest = dict(values, timestamp=when)
            self._stored.notify_all()

    # ------------------------------------------------------------------ reading

    def latest(self) -> dict[str, float]:
        """The last sample's values, with its time under "timestamp"; {} before any."""
        with self._lock:
            return dict(self._latest)

    def sources(self) -> list[str]:
        with self._lock:
            return sorted(self._columns)

    def __len__(self) -> int:
        with self._lock:
            return min(self._count, self.max_samples)

    def series(self, source: str) -> tuple[np.ndarray, np.ndarray]:
        """(unix times, values) of `source`, oldest first; samples without it left out."""
        with self._lock:
            column = self._columns.get(source)
            if column is None:
                return np.empty(0), np.empty(0)
            n = min(self._count, self.max_samples)
            if self._count <= self.max_samples:
                # Not wrapped yet: the first n slots in order, no index arrays.
                times, values = self._times[:n].copy(), column[:n].copy()
            else:
                start = self._count % self.max_samples
                order = (np.arange(n) + start) % self.max_samples
                times, values = self._times[order], column[order]
        keep = ~np.isnan(values)
        return times[keep], values[keep]

    def gpu_status(self) -> str | None:
        """None when GPU metrics are sampled, else why not."""
        if self._nvml is None:
            return "GPU metrics off (sampler made with nvml=False)"
        return self._nvml.reason

    def gpus(self) -> list[GpuInfo]:
        """Index, UUID and name of each GPU NVML sees (empty without NVML)."""
        return list(self._nvml.gpus) if self._nvml is not None else []
