"""The instrumented training loop of `modelsoak-train bench`.

One `train_run` trains a fresh model for one seed and records every step
(training/steptimer.py), memory and GPU samples (training/bench_probes.py), the
loss, and the validation metric after each epoch. Nothing in the loop waits for
the GPU except where the loop has to read a value (the loss every `log_every`
steps, the events at an epoch's end), so what is measured is the loop a user
would run without us. bench/training.py checks that claim as a ratio against a
bare loop.

Under torchrun (training/distributed.py) the model is wrapped in
DistributedDataParallel and the loader gets a DistributedSampler; every rank
measures itself and rank 0 merges the records.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.bench_probes import Sampler, flops_per_sample
from training.errors import SetupError
from training.steptimer import BACKWARD, DATA, FORWARD, H2D, OPTIMIZER, StepRecords, StepTimer

AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BenchOptions:
    """How the loop runs; the CLI's flags map onto these fields."""

    batch_size: int = 32
    epochs: int = 10
    steps: int | None = None  # stop after this many steps in all (a throughput run)
    warmup_steps: int = 5  # excluded from the step statistics
    num_workers: int = 0
    pin_memory: bool = False
    channels_last: bool = False
    amp: str | None = None  # bf16 / fp16
    compile: bool = False
    device: str = "cpu"
    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "constant"
    evaluate: bool = True
    log_every: int = 10  # steps between reads of the loss (a GPU sync) and monitor updates
    grad_norm: bool = False  # the monitor's: read the gradient norm every log_every steps
    sample_interval_s: float = 0.1

    def validate(self) -> None:
        for name in ("batch_size", "epochs", "log_every"):
            if getattr(self, name) < 1:
                raise SetupError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected >= 1")
        if self.steps is not None and self.steps < 1:
            raise SetupError(f"--steps {self.steps}: expected >= 1")
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise SetupError("--warmup-steps and --num-workers must be >= 0")
        if self.amp is not None and self.amp not in AMP:
            raise SetupError(f"--amp {self.amp!r}: expected one of {', '.join(AMP)}")


@dataclass
class Workload:
    """What one run trains: a fresh model per seed, the data, and how it is scored."""

    name: str
    build_model: Callable[[], nn.Module]
    train: Dataset[Any]
    val: Dataset[Any] | None
    loss: nn.Module
    classification: bool = True


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    wall_s: float  # training time of the epoch (evaluation excluded)
    end_s: float  # cumulative training time at the epoch's end
    steps: int
    samples: int
    loss: float | None
    accuracy: float | None
    peak_allocated_bytes: float | None  # CUDA allocator peak of the epoch
    peak_reserved_bytes: float | None
    peak_rss_bytes: float
    t0: float = 0.0  # sampler clock at the epoch's start / end
    t1: float = 0.0
    complete: bool = True  # False when --steps ended it early


@dataclass
class RunResult:
    seed: int
    device: str
    steps: StepRecords
    epochs: list[EpochRecord]
    losses: list[float]
    sampler: Sampler
    flops_per_sample: float | None
    lr: list[float] = field(default_factory=list)
    nonfinite_steps: int = 0
    rank: int = 0
    world_size: int = 1


class StepHook(Protocol):
    """Called every `log_every` steps (the monitor) and at each epoch's end."""

    def on_steps(self, run: LiveRun) -> None: ...

    def on_epoch(self, run: LiveRun, epoch: EpochRecord) -> None: ...


@dataclass
class LiveRun:
    """What a hook may read while the run goes on."""

    timer: StepTimer
    sampler: Sampler
    step: int = 0
    epoch: int = 0
    loss: float | None = None
    lr: float = 0.0
    grad_norm: float | None = None
    nonfinite: int = 0
    accuracy: float | None = None


def _loader(work: Workload, opts: BenchOptions, seed: int, ddp: tuple[int, int] | None) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(seed)
    sampler: Any = None
    if ddp is not None:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(work.train, num_replicas=ddp[1], rank=ddp[0], shuffle=True, seed=seed)
    return DataLoader(
        work.train,
        batch_size=opts.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=opts.num_workers,
        pin_memory=opts.pin_memory,
        persistent_workers=opts.num_workers > 0,
        generator=g,
    )


def _prepare(work: Workload, opts: BenchOptions, device: torch.device, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = work.build_model().to(device)
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def evaluate(model: nn.Module, val: Dataset[Any], opts: BenchOptions, device: torch.device) -> float:
    """Top-1 accuracy on the validation set."""
    loader = DataLoader(val, batch_size=max(opts.batch_size, 256), num_workers=0)
    correct = total = 0
    model.eval()
    with torch.no_grad(), _autocast(opts, device):
        for x, y in loader:
            out = model(_to(x, opts, device))
            correct += int((out.argmax(1).cpu() == y).sum())
            total += len(y)
    model.train()
    return correct / max(1, total)


def _autocast(opts: BenchOptions, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if opts.amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP[opts.amp])


def _to(x: torch.Tensor, opts: BenchOptions, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=opts.pin_memory)
    if opts.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def count_flops(model: nn.Module, work: Workload, opts: BenchOptions, device: torch.device) -> float | None:
    """FLOPs per sample of one forward and backward on a real batch (weights untouched)."""
    x, y = next(iter(DataLoader(work.train, batch_size=opts.batch_size)))
    x, y = _to(x, opts, device), y.to(device)

    def step() -> None:
        with _autocast(opts, device):
            loss = work.loss(model(x), y)
        loss.backward()

    try:
        flops = flops_per_sample(step, len(y))
    except Exception:  # an op FlopCounterMode cannot trace: the report says "not measured"
        flops = None
    model.zero_grad(set_to_none=True)
    return flops


def train_run(
    work: Workload,
    opts: BenchOptions,
    seed: int = 0,
    hooks: list[StepHook] | None = None,
    ddp: tuple[int, int] | None = None,
) -> RunResult:
    """Train one seed for `opts.epochs` epochs (or `opts.steps` steps) and record it.

    ddp: (rank, world size) when torch.distributed is initialised (training/distributed.py).
    """
    from training.optim import make_optimizer, make_schedule

    opts.validate()
    device = torch.device(opts.device)
    model = _prepare(work, opts, device, seed)
    flops = count_flops(model, work, opts, device)
    net: nn.Module = model
    if ddp is not None:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if opts.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    loader = _loader(work, opts, seed, ddp)
    optim = make_optimizer(opts.optimizer, model.parameters(), opts.lr)
    sched = make_schedule(opts.schedule, optim, len(loader), opts.epochs)
    scaler = torch.amp.GradScaler("cuda") if opts.amp == "fp16" and device.type == "cuda" else None
    timer = StepTimer(device)
    sampler = Sampler(device, timer._origin, opts.sample_interval_s)
    live = LiveRun(timer, sampler, lr=sched.lr)
    result = RunResult(seed, str(device), timer.records(), [], [], sampler, flops)
    if ddp is not None:
        result.rank, result.world_size = ddp
    with sampler:
        for epoch in range(1, opts.epochs + 1):
            if opts.steps is not None and live.step >= opts.steps:
                break
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            live.epoch = epoch
            rec = _epoch(net, model, loader, work, opts, device, optim, sched, scaler, live, result, hooks)
            result.epochs.append(rec)
            for h in hooks or []:
                h.on_epoch(live, rec)
    result.steps = timer.records()
    result.nonfinite_steps = live.nonfinite
    return result


def _epoch(
    net: nn.Module,
    model: nn.Module,
    loader: DataLoader[Any],
    work: Workload,
    opts: BenchOptions,
    device: torch.device,
    optim: torch.optim.Optimizer,
    sched: Any,
    scaler: Any,
    live: LiveRun,
    result: RunResult,
    hooks: list[StepHook] | None,
) -> EpochRecord:
    timer, sampler = live.timer, live.sampler
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    sampler.sample()
    t0 = sampler.now()
    first, pending = len(timer._samples), []
    it: Iterator[Any] = iter(loader)
    while opts.steps is None or live.step < opts.steps:
        timer.start()
        try:
            x, y = next(it)
        except StopIteration:
            timer.cancel()
            break
        timer.mark(DATA)
        x, y = _to(x, opts, device), y.to(device, non_blocking=opts.pin_memory)
        timer.mark(H2D)
        with _autocast(opts, device):
            loss = work.loss(net(x), y)
        timer.mark(FORWARD)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        timer.mark(BACKWARD)
        if opts.grad_norm and (live.step + 1) % opts.log_every == 0:
            if scaler is not None:
                scaler.unscale_(optim)
            live.grad_norm = grad_norm(model)
        if scaler is not None:
            scaler.step(optim)
            scaler.update()
        else:
            optim.step()
        optim.zero_grad(set_to_none=True)
        sched.after_step()
        timer.mark(OPTIMIZER)
        timer.count(len(y))
        pending.append(loss.detach())
        live.step += 1
        if live.step % opts.log_every == 0:
            _read_losses(pending, live, result, sched)
            pending = []
            for h in hooks or []:
                h.on_steps(live)
    _read_losses(pending, live, result, sched)
    timer.pause()
    t1 = sampler.now()
    sampler.sample()
    steps = len(timer._samples) - first
    samples = int(sum(timer._samples[first:]))
    wall = t1 - t0
    acc = None
    if opts.evaluate and work.val is not None and work.classification:
        acc = evaluate(model, work.val, opts, device)
        live.accuracy = acc
    end = (result.epochs[-1].end_s if result.epochs else 0.0) + wall
    window = sampler.rss.window(t0, t1)
    rss = float(window.max()) if len(window) else float(sampler.rss.v[-1])
    sched.after_epoch(live.loss if live.loss is not None else math.nan)
    return EpochRecord(
        live.epoch,
        wall,
        end,
        steps,
        samples,
        live.loss,
        acc,
        float(torch.cuda.max_memory_allocated(device)) if cuda else None,
        float(torch.cuda.max_memory_reserved(device)) if cuda else None,
        rss,
        t0,
        t1,
        steps == len(loader),
    )


def _read_losses(pending: list[torch.Tensor], live: LiveRun, result: RunResult, sched: Any) -> None:
    """The one place the loop reads device values back (a sync on CUDA)."""
    if not pending:
        return
    values = torch.stack(pending).float().cpu().tolist()
    live.timer.flush()  # the read above synchronised: resolving the events now waits for nothing
    result.losses.extend(values)
    finite = [v for v in values if math.isfinite(v)]
    live.nonfinite += len(values) - len(finite)
    live.loss = values[-1]
    live.lr = sched.lr
    result.lr.append(live.lr)


def grad_norm(model: nn.Module) -> float:
    """Total L2 norm of the gradients (a device sync: read only every log interval)."""
    norms = [
        torch.linalg.vector_norm(p.grad.detach().float()) for p in model.parameters() if p.grad is not None
    ]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
