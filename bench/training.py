"""Training benchmark (issue: modelsoak-train bench), measured in one run.

- overhead: samples/s of modelsoak's instrumented training loop (training/bench.py:
  the step timer's phase marks, the memory sampler thread, the loss read every 10
  steps, the per-epoch bookkeeping) against a bare PyTorch loop on the same model
  (digits-cnn), data (scikit-learn digits), batch size (32), optimizer (Adam, lr
  1e-3), DataLoader and one torch thread.

  On a shared 2-core machine whole runs a few seconds apart differ by 10-50 %
  with other processes' load, so the two loops alternate epoch by epoch in one
  process: a hook at the end of each of our epochs runs one epoch of the bare
  loop (its own model, optimizer and loader) and times it; our epoch is timed
  from the end of that hook to the end of our next epoch, so it includes all of
  our per-epoch work. Each of our epochs is paired with the mean of the bare
  epochs just before and after it; the ratio is the median of the pairs' ratios,
  in process CPU time (all threads; the sampler thread runs through both, costing
  it about 0.03 %). Wall-time ratios are recorded beside it. Goal: >= 0.97.
- the same with the live monitor on (metrics port, gradient norm every 10 steps),
  for information (no goal).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from bench._procs import median
from training.bench import BenchOptions, Workload, train_run
from training.losses import make_loss
from training.models import DigitsCNN, resolve_data
from training.optim import make_optimizer

EPOCHS, BATCH, LR = 41, 32, 1e-3  # 1 warm-up epoch, then 40 pairs per loop variant


def _workload() -> Workload:
    train, val = resolve_data(None, "digits-cnn")
    return Workload("digits-cnn", DigitsCNN, train, val, make_loss("cross_entropy"))


class BareLoop:
    """The loop a user writes, nothing else, one epoch per call."""

    def __init__(self, work: Workload, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = work.build_model()
        self.opt = make_optimizer("adam", self.model.parameters(), LR)
        self.loader = torch.utils.data.DataLoader(
            work.train, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        self.loss_fn = work.loss

    def epoch(self) -> int:
        samples = 0
        for x, y in self.loader:
            x, y = x.to("cpu"), y.to("cpu")
            loss = self.loss_fn(self.model(x), y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            samples += len(y)
        return samples


class Alternate:
    """A hook: at the end of each of our epochs, time it, then run and time one bare epoch."""

    def __init__(self, bare: BareLoop) -> None:
        self.bare = bare
        self.ours: list[tuple[float, float, int]] = []  # (cpu s, wall s, samples) per epoch
        self.theirs: list[tuple[float, float, int]] = []
        self._mark = (time.process_time(), time.perf_counter())

    def on_steps(self, run: Any) -> None:
        pass

    def on_epoch(self, run: Any, epoch: Any) -> None:
        c, w = time.process_time(), time.perf_counter()
        self.ours.append((c - self._mark[0], w - self._mark[1], epoch.samples))
        n = self.bare.epoch()
        c2, w2 = time.process_time(), time.perf_counter()
        self.theirs.append((c2 - c, w2 - w, n))
        self._mark = (time.process_time(), time.perf_counter())

    def ratios(self, col: int) -> list[float]:
        """Our epoch k against the mean of the bare epochs k-1 and k (around it); epoch 0 warms up."""
        ours = [e[2] / e[col] for e in self.ours]
        bare = [e[2] / e[col] for e in self.theirs]
        return [ours[k] / ((bare[k - 1] + bare[k]) / 2) for k in range(1, len(ours))]


def _alternate(work: Workload, monitor: bool) -> Alternate:
    alt = Alternate(BareLoop(work))
    hooks: list[Any] = []
    mon = None
    if monitor:
        from prometheus_client import CollectorRegistry

        from training.monitor import TrainingMonitor

        mon = TrainingMonitor("bench", "digits-cnn", port=0, addr="127.0.0.1", registry=CollectorRegistry())
        hooks.append(mon)
    hooks.append(alt)  # last: the monitor's work at an epoch's end counts as ours
    opts = BenchOptions(
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=LR,
        optimizer="adam",
        warmup_steps=0,
        evaluate=False,
        grad_norm=monitor,
    )
    try:
        train_run(work, opts, seed=0, hooks=hooks)
    finally:
        if mon is not None:
            mon.close()
    return alt


def overhead() -> dict[str, Any]:
    # One intra-op thread: OpenMP threads that spin while another process holds
    # the second core make epochs swing by 10x; both loops run with it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _overhead()
    finally:
        torch.set_num_threads(threads)


def _overhead() -> dict[str, Any]:
    work = _workload()
    BareLoop(work).epoch()  # warm the allocator before anything counts
    plain, monitored = _alternate(work, False), _alternate(work, True)
    cpu, wall = plain.ratios(0), plain.ratios(1)
    return {
        "setup": {
            "model": "digits-cnn",
            "data": "scikit-learn digits, 1,437 training samples",
            "batch_size": BATCH,
            "optimizer": f"adam lr {LR}",
            "pairs": len(cpu),
            "torch_threads": 1,
        },
        "epoch_ratios_cpu": cpu,
        "median_samples_per_cpu_s": {
            "bare": median([n / c for c, _, n in plain.theirs[1:]]),
            "ours": median([n / c for c, _, n in plain.ours[1:]]),
        },
        "instrumented_vs_bare": median(cpu),
        "instrumented_vs_bare_spread": [min(cpu), max(cpu)],
        "wall_instrumented_vs_bare": median(wall),
        "with_monitor_vs_bare": median(monitored.ratios(0)),
        "goals": {"instrumented_vs_bare": 0.97},
    }
