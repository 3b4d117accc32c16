"""Where a training step's time goes: data-loading wait, host-to-device copy,
forward, backward and optimizer step.

The loop calls `start()` before it asks the loader for a batch, then `mark(i)`
after each phase. On CPU every mark is a `perf_counter_ns` timestamp. On CUDA the
data wait is still host time (the loop blocks in `next(iterator)`), while the
device phases are CUDA events recorded on the current stream and read only at
`flush()`, after the stream is synchronised: reading an event earlier would
make every step wait for the GPU and change what is measured.

A step's time is the host interval from its start to the next step's start (or, at the end
of an epoch, to `pause()`), so the steps' times add up to the wall time of
the loop and throughput follows from them; whatever the phases do not cover
(loop bookkeeping, the GPU idling between launches) is the "other" share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PHASES = ("data", "h2d", "forward", "backward", "optimizer")
DATA, H2D, FORWARD, BACKWARD, OPTIMIZER = range(5)


@dataclass
class StepRecords:
    """Per-step records, in seconds, as numpy arrays of equal length."""

    start_s: np.ndarray  # host time of each step's start, from the timer's origin
    step_s: np.ndarray  # host interval from this step's start to the next one's
    phase_s: dict[str, np.ndarray] = field(default_factory=dict)
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0))
    timing: str = "perf_counter"

    def __len__(self) -> int:
        return len(self.step_s)

    def select(self, mask: np.ndarray) -> StepRecords:
        return StepRecords(
            self.start_s[mask],
            self.step_s[mask],
            {k: v[mask] for k, v in self.phase_s.items()},
            self.samples[mask],
            self.timing,
        )


class StepTimer:
    """Timestamps of the phases of every step; `records()` turns them into durations."""

    def __init__(self, device: Any = "cpu") -> None:
        import torch

        self._cuda = torch.device(device).type == "cuda"
        self._now = time.perf_counter_ns
        self._origin = self._now()
        # Flat lists: appending an int is the cheapest thing a step can do.
        self._starts: list[int] = []
        self._host: list[int] = []  # after data, per step (CUDA) or after each phase (CPU)
        self._samples: list[int] = []
        self._events: list[Any] = []  # CUDA: 5 events per step, pending until flush()
        self._device_ms: list[float] = []  # CUDA: 4 resolved phase durations per step
        self._breaks: dict[int, int] = {}  # step index -> end, where the loop paused after it
        if self._cuda:
            self._event = torch.cuda.Event
            self._sync = torch.cuda.synchronize

    @property
    def timing(self) -> str:
        return "cuda events (data wait: perf_counter)" if self._cuda else "perf_counter"

    def start(self) -> None:
        self._starts.append(self._now())

    def mark(self, phase: int) -> None:
        """End of `phase` (one of DATA..OPTIMIZER), in order."""
        if not self._cuda:
            self._host.append(self._now())
            return
        if phase == DATA:
            self._host.append(self._now())
        ev = self._event(enable_timing=True)
        ev.record()
        self._events.append(ev)

    def cancel(self) -> None:
        """The step just started has no batch (the loader is exhausted): forget it."""
        n = len(self._samples)
        del self._starts[n:]
        del self._host[(n if self._cuda else n * 5) :]
        del self._events[len(self._events) - len(self._events) % 5 :]

    def count(self, samples: int) -> None:
        self._samples.append(samples)

    def flush(self) -> None:
        """CUDA: synchronise and resolve the pending events (cheap on CPU)."""
        if not self._cuda or not self._events:
            return
        self._sync()
        evs = self._events
        for i in range(0, len(evs) - len(evs) % 5, 5):
            self._device_ms.extend(evs[i + k].elapsed_time(evs[i + k + 1]) for k in range(4))
        self._events = evs[len(evs) - len(evs) % 5 :]

    def pause(self) -> None:
        """The loop stops stepping (an epoch ends, evaluation follows): the last
        step ends now, not when the next one starts."""
        self.flush()
        if self._samples:
            self._breaks[len(self._samples) - 1] = self._now()

    def records(self, since: int = 0) -> StepRecords:
        """Completed steps from index `since` on (a step counts once its optimizer
        phase is marked); the monitor reads only the steps it has not seen."""
        n = len(self._samples)
        a = min(since, n)
        starts = np.asarray(self._starts[a : n + 1], dtype=np.int64)
        m = n - a
        nxt = np.append(starts[1:], self._now())[:m] if m else np.zeros(0, np.int64)
        for i, t in self._breaks.items():
            if a <= i < n:
                nxt[i - a] = t
        step = (nxt - starts[:m]) / 1e9
        phases: dict[str, np.ndarray] = {}
        if self._cuda:
            done = max(0, min(n, len(self._device_ms) // 4) - a)
            dev = np.asarray(self._device_ms[a * 4 : (a + done) * 4], dtype=float).reshape(done, 4) / 1e3
            host = np.asarray(self._host[a:n], dtype=np.int64)
            phases["data"] = (host - starts[:m]) / 1e9
            for k, name in enumerate(PHASES[1:]):
                col = np.full(m, np.nan)
                col[:done] = dev[:, k]
                phases[name] = col
        else:
            marks = np.asarray(self._host[a * 5 : n * 5], dtype=np.int64).reshape(m, 5)
            prev = np.column_stack([starts[:m], marks[:, :4]]) if m else np.zeros((0, 5), np.int64)
            for k, name in enumerate(PHASES):
                phases[name] = (marks[:, k] - prev[:, k]) / 1e9
        samples = np.asarray(self._samples[a:n], dtype=float)
        return StepRecords((starts[:m] - self._origin) / 1e9, step, phases, samples, self.timing)
