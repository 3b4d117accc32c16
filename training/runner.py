"""The plain training loop, with what the checks need recorded as it goes.

Per step: loss, learning rate, every parameter's gradient norm (and whether it had one), the
update-to-weight ratio; per epoch: train and validation loss and metric. It stops at the first
non-finite loss, activation or gradient and says where, instead of training on NaNs.
Hooks see every phase of a step (the bench times them).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.config import TrainConfig
from training.errors import SetupError
from training.losses import make_loss
from training.metrics import Metric, metric_for
from training.models import Task, infer_task, resolve_data, resolve_model
from training.optim import Schedule, make_optimizer, make_schedule
from training.provenance import resolve_device
from training.watch import ActivationWatch, forward_order


@dataclass
class StepContext:
    """What a hook sees: the run's objects and the current step (0-based, over the whole run)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    step: int = 0
    epoch: int = 0
    batch_size: int = 0
    loss: torch.Tensor | None = None


class Hook:
    """Override any of these; each is called at that point of every step."""

    def on_batch(self, ctx: StepContext) -> None:  # the batch is on the device
        pass

    def after_forward(self, ctx: StepContext) -> None:  # loss computed
        pass

    def after_backward(self, ctx: StepContext) -> None:
        pass

    def after_step(self, ctx: StepContext) -> None:  # optimizer stepped
        pass

    def on_epoch_end(self, ctx: StepContext, record: EpochRecord) -> None:
        pass


@dataclass
class EpochRecord:
    epoch: int  # 0 is the untrained model (validation only)
    train_loss: float | None
    train_metric: float | None
    val_loss: float
    val_metric: float | None
    lr: float
    seconds: float


@dataclass
class NonFinite:
    step: int
    epoch: int
    kind: str  # loss | activation | gradient
    where: str  # the layer or parameter, or "loss"
    loss: float


@dataclass
class TrainResult:
    config: TrainConfig
    task: Task
    metric: str | None
    metric_higher_is_better: bool
    param_order: list[str]  # trainable parameters in the order the forward pass reaches them
    param_numel: dict[str, int]
    param_ndim: dict[str, int]
    step_loss: list[float] = field(default_factory=list)
    step_lr: list[float] = field(default_factory=list)
    grad_norm: dict[str, list[float]] = field(default_factory=dict)
    grad_none_steps: dict[str, int] = field(default_factory=dict)
    update_ratio: dict[str, list[float]] = field(default_factory=dict)
    epochs: list[EpochRecord] = field(default_factory=list)
    nonfinite: NonFinite | None = None
    train_seconds: float = 0.0
    train_samples: int = 0
    device: str = "cpu"
    initial_params: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    final_params: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def steps(self) -> int:
        return len(self.step_loss)

    @property
    def final(self) -> EpochRecord:
        return self.epochs[-1]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Prepared:
    """A model, its data, loss and metric, ready to train (built once, then trained)."""

    config: TrainConfig
    model: nn.Module
    train: Dataset
    val: Dataset
    task: Task
    loss_name: str
    loss: nn.Module
    metric: Metric | None
    device: torch.device


def prepare(cfg: TrainConfig, datasets: tuple[Dataset, Dataset] | None = None) -> Prepared:
    """Seed, build the model (its init depends on the seed), load the data, check that they fit."""
    cfg = cfg.resolved()
    device = resolve_device(cfg.device)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)
    model = resolve_model(cfg.model)
    train, val = datasets if datasets is not None else resolve_data(cfg.data, cfg.model)
    task = infer_task(cfg.data, cfg.model, train)
    loss_name = cfg.loss or task.loss
    p = Prepared(
        cfg,
        model.to(device),
        train,
        val,
        task,
        loss_name,
        make_loss(loss_name),
        metric_for(task, loss_name),
        device,
    )
    check_fit(p)
    return p


def check_fit(p: Prepared) -> None:
    """One forward and loss on two samples, so a mismatch is a setup error, not a crash mid-run."""
    x, y = next(iter(DataLoader(p.train, batch_size=2, shuffle=False)))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        try:
            out = p.model(x.to(p.device))
        except Exception as e:
            raise SetupError(
                f"--model {p.config.model!r} does not fit --data: its forward pass on inputs of "
                f"shape {tuple(x.shape[1:])} raised {type(e).__name__}: {e}"
            ) from e
        if not isinstance(out, torch.Tensor):
            raise SetupError(
                f"--model {p.config.model!r}: forward returned {type(out).__name__}, expected a Tensor"
            )
        n_out = out.shape[1] if out.dim() == 2 else 0
        classifier = p.task.kind == "classification" and p.loss_name != "contrastive"
        if classifier and p.task.num_classes and 1 < n_out < p.task.num_classes:
            raise SetupError(
                f"--model {p.config.model!r} outputs {n_out} classes but the data has "
                f"{p.task.num_classes} (targets 0..{p.task.num_classes - 1})"
            )
        try:
            p.loss(out, y.to(p.device))
        except SetupError:
            raise
        except Exception as e:
            raise SetupError(
                f"--loss {p.loss_name}: the model's output {tuple(out.shape)} and the targets "
                f"{tuple(y.shape)} ({y.dtype}) do not fit it: {type(e).__name__}: {e}"
            ) from e


def _named_trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def evaluate(p: Prepared, ds: Dataset, batch_size: int = 256) -> tuple[float, float | None]:
    """Mean loss and metric over a dataset, in eval mode without gradients."""
    was_training = p.model.training
    p.model.eval()
    total, loss_sum, metric_sum = 0, 0.0, 0.0
    with torch.no_grad():
        for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
            x, y = x.to(p.device), y.to(p.device)
            out = p.model(x)
            n = len(y)
            loss_sum += float(p.loss(out, y)) * n
            if p.metric is not None:
                metric_sum += p.metric.batch_sum(out, y)
            total += n
    p.model.train(was_training)
    return loss_sum / total, (metric_sum / total if p.metric is not None else None)


def _grad_norms(named: list[tuple[str, nn.Parameter]], res: TrainResult) -> str | None:
    """Record each parameter's gradient norm; return the first with a non-finite gradient."""
    bad = None
    for name, prm in named:
        if prm.grad is None:
            res.grad_none_steps[name] = res.grad_none_steps.get(name, 0) + 1
            res.grad_norm[name].append(0.0)
            continue
        norm = float(prm.grad.detach().norm())
        res.grad_norm[name].append(norm)
        if bad is None and not math.isfinite(norm):
            bad = name
    return bad


def _locate_nonfinite_activation(p: Prepared, x: torch.Tensor) -> str | None:
    """Re-run the step's forward with watches to name the first layer whose output went bad."""
    watch = ActivationWatch(p.model)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[p.device] if p.device.type == "cuda" else []):
            p.model(x)
    finally:
        watch.close()
    return watch.first_bad


def _epoch_record(
    p: Prepared, res: TrainResult, epoch: int, sums: tuple[float, float, int], t0: float
) -> EpochRecord:
    val_loss, val_metric = evaluate(p, p.val)
    loss_sum, metric_sum, n = sums
    return EpochRecord(
        epoch,
        loss_sum / n if n else None,
        (metric_sum / n if p.metric is not None else None) if n else None,
        val_loss,
        val_metric,
        float(res.step_lr[-1]) if res.step_lr else float(p.config.lr or 0.0),
        time.perf_counter() - t0,
    )


def train(
    cfg: TrainConfig | Prepared,
    *,
    hooks: Sequence[Hook] = (),
    record_updates: bool = True,
    keep_params: bool = True,
    batch_source: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    stop_after_steps: int | None = None,
    watch_activations: bool | None = None,
) -> TrainResult:
    """Train for cfg.epochs (each capped at max_steps_per_epoch), validating after every epoch.

    batch_source: train on these batches (every epoch) instead of the shuffled training set.
    stop_after_steps: end the run early, the schedule unchanged (a prefix of the full run).
    watch_activations: check every layer's output for NaN on every step (default: on CPU, where
    it is cheap; on CUDA each check would synchronise). A non-finite loss is always traced back to
    the first layer whose output went non-finite.
    """
    p = cfg if isinstance(cfg, Prepared) else prepare(cfg)
    c = p.config
    assert c.epochs is not None and c.batch_size is not None and c.lr is not None and c.optimizer
    model, device = p.model, p.device
    gen = torch.Generator().manual_seed(c.seed)
    loader: Any = batch_source or DataLoader(p.train, batch_size=c.batch_size, shuffle=True, generator=gen)
    steps_per_epoch = (
        len(loader) if c.max_steps_per_epoch is None else min(len(loader), c.max_steps_per_epoch)
    )
    opt = make_optimizer(c.optimizer, model.parameters(), c.lr, weight_decay=c.weight_decay)
    sched: Schedule = make_schedule(c.schedule, opt, steps_per_epoch, c.epochs, **c.schedule_kw)
    named = _named_trainable(model)
    x0 = next(iter(loader))[0].to(device)
    res = TrainResult(
        c,
        p.task,
        p.metric.name if p.metric else None,
        p.metric.higher_is_better if p.metric else False,
        forward_order(model, x0),
        {n: q.numel() for n, q in named},
        {n: q.dim() for n, q in named},
        device=str(device),
    )
    res.grad_norm = {n: [] for n, _ in named}
    res.update_ratio = {n: [] for n, _ in named}
    if keep_params:
        res.initial_params = {n: q.detach().cpu().clone() for n, q in named}
    ctx = StepContext(model, opt, device)
    res.epochs.append(_epoch_record(p, res, 0, (0.0, 0.0, 0), time.perf_counter()))
    watch = (
        ActivationWatch(model, nan_only=True)
        if (device.type == "cpu" if watch_activations is None else watch_activations)
        else None
    )
    model.train()
    try:
        _epochs(
            p, res, ctx, hooks, sched, named, loader, steps_per_epoch, record_updates, stop_after_steps, watch
        )
    finally:
        if watch is not None:
            watch.close()
    if keep_params:
        res.final_params = {n: q.detach().cpu().clone() for n, q in named}
    return res


def _epochs(
    p: Prepared,
    res: TrainResult,
    ctx: StepContext,
    hooks: Sequence[Hook],
    sched: Schedule,
    named: list[tuple[str, nn.Parameter]],
    loader: Any,
    steps_per_epoch: int,
    record_updates: bool,
    stop_after_steps: int | None,
    watch: ActivationWatch | None,
) -> None:
    c = p.config
    assert c.epochs is not None
    for epoch in range(1, c.epochs + 1):
        t0, sums = time.perf_counter(), [0.0, 0.0, 0]
        for i, (xb, yb) in enumerate(loader):
            if i >= steps_per_epoch or (stop_after_steps is not None and res.steps >= stop_after_steps):
                break
            if not _one_step(p, res, ctx, hooks, sched, named, xb, yb, epoch, sums, record_updates, watch):
                break
        res.train_seconds += time.perf_counter() - t0
        rec = _epoch_record(p, res, epoch, (sums[0], sums[1], int(sums[2])), t0)
        res.epochs.append(rec)
        for h in hooks:
            h.on_epoch_end(ctx, rec)
        if res.nonfinite is not None or (stop_after_steps is not None and res.steps >= stop_after_steps):
            break
        sched.after_epoch(rec.val_loss)


def _one_step(
    p: Prepared,
    res: TrainResult,
    ctx: StepContext,
    hooks: Sequence[Hook],
    sched: Schedule,
    named: list[tuple[str, nn.Parameter]],
    xb: torch.Tensor,
    yb: torch.Tensor,
    epoch: int,
    sums: list[float],
    record_updates: bool,
    watch: ActivationWatch | None = None,
) -> bool:
    """One optimizer step; False (and res.nonfinite set) when something went non-finite."""
    x, y = xb.to(p.device), yb.to(p.device)
    ctx.step, ctx.epoch, ctx.batch_size = res.steps, epoch, len(y)
    for h in hooks:
        h.on_batch(ctx)
    if watch is not None:
        watch.first_bad = None
    out = p.model(x)
    loss = p.loss(out, y)
    ctx.loss = loss
    for h in hooks:
        h.after_forward(ctx)
    lv = float(loss.detach())
    if watch is not None and watch.first_bad is not None:  # even when the loss is still finite
        res.nonfinite = NonFinite(res.steps, epoch, "activation", watch.first_bad, lv)
        return False
    if not math.isfinite(lv):
        where = _locate_nonfinite_activation(p, x)
        kind = "activation" if where else "loss"
        res.nonfinite = NonFinite(res.steps, epoch, kind, where or "loss", lv)
        return False
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for h in hooks:
        h.after_backward(ctx)
    bad = _grad_norms(named, res)
    res.step_loss.append(lv)
    res.step_lr.append(sched.lr)
    if bad is not None:
        res.nonfinite = NonFinite(res.steps - 1, epoch, "gradient", bad, lv)
        return False
    before = [q.detach().clone() for _, q in named] if record_updates else []
    ctx.optimizer.step()
    if record_updates:
        for (name, q), b in zip(named, before, strict=True):
            wn = float(b.norm())
            res.update_ratio[name].append(float((q.detach() - b).norm()) / wn if wn > 0 else 0.0)
    sched.after_step()
    for h in hooks:
        h.after_step(ctx)
    n = len(y)
    sums[0] += lv * n
    if p.metric is not None:
        sums[1] += p.metric.batch_sum(out.detach(), y)
    sums[2] += n
    res.train_samples += n
    return True
