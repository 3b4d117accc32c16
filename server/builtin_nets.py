"""What the built-in models compute: their torch modules and the host-side
effects (sleep, leak) that the backends run inside the compute phase.

The definitions, parameters and the ONNX / TorchScript cache are in
`server.builtin`; this module holds the parts that do the work.
"""

from __future__ import annotations

import itertools
import mmap
import threading
import time
import weakref
from typing import Any

import numpy as np
import torch
from torch import nn

# --------------------------------------------------------------------------- modules


class Echo(nn.Module):
    """Returns its input: the torch side of identity, sleep and leaky."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def make_mlp(hidden: int, layers: int) -> nn.Module:
    dims = [256] + [hidden] * layers
    stack: list[nn.Module] = []
    for d_in, d_out in itertools.pairwise(dims):
        stack += [nn.Linear(d_in, d_out), nn.ReLU()]
    stack.append(nn.Linear(dims[-1], 10))
    return nn.Sequential(*stack)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        # nn.Identity rather than None keeps the block scriptable without Optional.
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18's layout: 7x7/2 stem and max-pool, 4 stages of 2 BasicBlocks."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        blocks: list[nn.Module] = []
        c_in = 64
        for i, c_out in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Non-trivial BatchNorm statistics, so that a backend that mishandles
        # BatchNorm (or a fused Conv+BN) shows it in the ONNX-vs-torch test.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                with torch.no_grad():
                    m.weight.uniform_(0.5, 1.0)
                    m.bias.normal_(0.0, 0.1)
                    m.running_mean.normal_(0.0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------- side effects


class SleepEffect:
    """A known service time: `sleep_ms` per batch plus `per_sample_ms` per batch row.

    Callable as a `SideEffect` (n_requests, batch_size); the per-sample cost
    scales with the batch size. `time.sleep` releases
    the GIL, so other instances keep running meanwhile, as with real compute.
    """

    def __init__(self, sleep_ms: float, per_sample_ms: float) -> None:
        self.sleep_ms = sleep_ms
        self.per_sample_ms = per_sample_ms

    def __call__(self, n_requests: int, batch_size: int = 1) -> None:
        delay_ms = self.sleep_ms + self.per_sample_ms * max(batch_size, 0)
        if delay_ms > 0:
            time.sleep(delay_ms / 1000.0)


_LEAKS: weakref.WeakSet[LeakEffect] = weakref.WeakSet()
_LEAKS_LOCK = threading.Lock()


_SLAB_BYTES = 4 << 20


class LeakEffect:
    """Keeps `leak_bytes` per request forever (until `release`).

    Host memory comes from anonymous mmap slabs, written to: malloc would first
    reuse freed pages that are still resident (RSS would not move until that
    pool is used up), and an untouched allocation is not resident at all. So
    RSS grows by leak_bytes per request from the first request on. On CUDA the
    leak is a filled CUDA tensor, so torch's allocated-bytes counter grows.
    """

    def __init__(self, leak_bytes: int, device: str) -> None:
        self.leak_bytes = leak_bytes
        # ONNX Runtime on CUDA without a CUDA torch: leak host memory instead.
        on_gpu = device.startswith("cuda") and torch.cuda.is_available()
        self.device = device if on_gpu else "cpu"
        self._kept: list[Any] = []  # mmap blocks, or CUDA tensors
        self._slab: mmap.mmap | None = None  # the block small leaks are carved from
        self._slab_used = 0
        self._kept_bytes = 0
        self._lock = threading.Lock()
        with _LEAKS_LOCK:
            _LEAKS.add(self)

    def __call__(self, n_requests: int, batch_size: int = 1) -> None:
        with self._lock:
            for _ in range(n_requests):
                if self.device.startswith("cuda"):
                    self._kept.append(
                        torch.full((self.leak_bytes,), 1, dtype=torch.uint8, device=self.device)
                    )
                else:
                    self._leak_host(self.leak_bytes)
                self._kept_bytes += self.leak_bytes

    def _leak_host(self, n: int) -> None:
        if n == 0:
            return
        if n >= _SLAB_BYTES:
            block = mmap.mmap(-1, n)
            np.frombuffer(block, np.uint8).fill(1)
            self._kept.append(block)
            return
        if self._slab is None or self._slab_used + n > _SLAB_BYTES:
            self._slab = mmap.mmap(-1, _SLAB_BYTES)
            self._kept.append(self._slab)
            self._slab_used = 0
        np.frombuffer(self._slab, np.uint8, count=n, offset=self._slab_used).fill(1)
        self._slab_used += n

    @property
    def kept_bytes(self) -> int:
        with self._lock:
            return self._kept_bytes

    def release(self) -> int:
        """Free what was kept; returns the number of bytes released."""
        with self._lock:
            for block in self._kept:
                if isinstance(block, mmap.mmap):
                    block.close()
            self._kept.clear()
            released, self._kept_bytes = self._kept_bytes, 0
            self._slab, self._slab_used = None, 0
        return released


def release_leaked() -> int:
    """Release the memory every `leaky` instance in this process kept (for tests)."""
    with _LEAKS_LOCK:
        effects = list(_LEAKS)
    return sum(e.release() for e in effects)
