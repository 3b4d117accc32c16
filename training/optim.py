"""Optimizers and learning-rate schedules by name.

A `Schedule` hides whether torch's scheduler steps per batch or per epoch, and whether it needs
the validation loss (plateau), so the training loop calls the same two hooks for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import lr_scheduler

from training.errors import SetupError

OPTIMIZERS = ("sgd", "sgd_momentum", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("constant", "step", "cosine", "plateau", "onecycle", "warmup_cosine")

# Learning rates a study uses for an optimizer when none is given: each one's usual default.
DEFAULT_LR = {
    "sgd": 0.05,
    "sgd_momentum": 0.01,
    "adam": 1e-3,
    "adamw": 1e-3,
    "rmsprop": 1e-3,
    "adagrad": 0.01,
}


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, **kw: Any
) -> torch.optim.Optimizer:
    """kw: weight_decay (all), momentum (sgd_momentum, default 0.9; rmsprop, default 0)."""
    if not (lr > 0 and math.isfinite(lr)):
        raise SetupError(f"--lr {lr}: expected a positive finite learning rate")
    wd = float(kw.get("weight_decay") or 0.0)
    plist = [p for p in params if p.requires_grad]
    if not plist:
        raise SetupError("the model has no trainable parameters (every parameter has requires_grad=False)")
    if name == "sgd":
        return torch.optim.SGD(plist, lr=lr, weight_decay=wd)
    if name == "sgd_momentum":
        return torch.optim.SGD(plist, lr=lr, momentum=float(kw.get("momentum", 0.9)), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(plist, lr=lr, weight_decay=wd)
    if name == "adamw":
        decay = kw.get("weight_decay")
        return torch.optim.AdamW(plist, lr=lr, weight_decay=0.01 if decay is None else float(decay))
    if name == "rmsprop":
        return torch.optim.RMSprop(plist, lr=lr, momentum=float(kw.get("momentum", 0.0)), weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(plist, lr=lr, weight_decay=wd)
    raise SetupError(f"--optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")


@dataclass
class Schedule:
    """One learning-rate schedule; `params` is what the LR check replays it from."""

    name: str
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    epochs: int
    params: dict[str, float] = field(default_factory=dict)
    per_batch: Any = None  # a torch scheduler stepped after every optimizer step
    per_epoch: Any = None  # stepped after every epoch (with the validation loss for plateau)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def after_step(self) -> None:
        if self.per_batch is not None:
            self.per_batch.step()

    def after_epoch(self, val_loss: float) -> None:
        if self.per_epoch is None:
            return
        if self.name == "plateau":
            self.per_epoch.step(val_loss)
        else:
            self.per_epoch.step()


def warmup_cosine_factor(step: int, warmup: int, total: int, eta_ratio: float) -> float:
    """LR multiplier: linear from 1/warmup to 1 over `warmup` steps, then cosine down to eta_ratio."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(step - warmup, span) / span
    return eta_ratio + (1.0 - eta_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_schedule(
    name: str, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int, **kw: Any
) -> Schedule:
    """kw by schedule: step (step_size epochs=max(1, epochs//3), gamma=0.1); cosine (eta_min=0);
    plateau (patience=2, factor=0.1, threshold=1e-3); onecycle (max_lr=10×lr, pct_start=0.3);
    warmup_cosine (warmup_steps=steps_per_epoch, eta_min=0)."""
    total = max(1, steps_per_epoch * epochs)
    base = float(optimizer.param_groups[0]["lr"])
    s = Schedule(name, optimizer, steps_per_epoch, epochs, {"base_lr": base, "total_steps": total})
    if name in ("constant", "none"):
        s.name = "constant"
    elif name == "step":
        size, gamma = int(kw.get("step_size") or max(1, epochs // 3)), float(kw.get("gamma") or 0.1)
        s.params |= {"step_size": size, "gamma": gamma}
        s.per_epoch = lr_scheduler.StepLR(optimizer, step_size=size, gamma=gamma)
    elif name == "cosine":
        eta = float(kw.get("eta_min") or 0.0)
        s.params |= {"eta_min": eta}
        s.per_batch = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=eta)
    elif name == "plateau":
        pat = int(kw["patience"]) if kw.get("patience") is not None else 2
        fac = float(kw.get("factor") or 0.1)
        thr = float(kw.get("threshold") or 1e-3)
        s.params |= {"patience": pat, "factor": fac, "threshold": thr}
        s.per_epoch = lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", patience=pat, factor=fac, threshold=thr, threshold_mode="rel"
        )
    elif name == "onecycle":
        max_lr, pct = float(kw.get("max_lr") or 10 * base), float(kw.get("pct_start") or 0.3)
        s.params |= {"max_lr": max_lr, "pct_start": pct}
        s.per_batch = lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=pct)
    elif name == "warmup_cosine":
        warm = int(kw.get("warmup_steps") or steps_per_epoch)
        eta = float(kw.get("eta_min") or 0.0)
        if warm >= total:
            raise SetupError(f"--warmup-steps {warm}: must be below the run's {total} steps")
        s.params |= {"warmup_steps": warm, "eta_min": eta}
        ratio = eta / base
        s.per_batch = lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine_factor(step, warm, total, ratio)
        )
    else:
        raise SetupError(f"--schedule {name!r}: expected one of {', '.join(SCHEDULES)}")
    return s
