"""Overfit one batch: a model and loss wired right drive one small batch's loss close to zero.

It uses Adam at 1e-3 whatever the run's optimizer, so it judges the model and the loss, not
the optimizer's settings.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

from training.checks.context import CheckContext
from training.optim import make_optimizer
from training.summary import CheckResult

BATCH = 16
MAX_STEPS = 300
TARGET = 0.05  # final loss at most this fraction of the first


def check_overfit_batch(ctx: CheckContext) -> CheckResult:
    p = ctx.fresh()
    gen = torch.Generator().manual_seed(ctx.config.seed)
    x, y = next(iter(DataLoader(p.train, batch_size=BATCH, shuffle=True, generator=gen)))
    x, y = x.to(p.device), y.to(p.device)
    opt = make_optimizer("adam", p.model.parameters(), 1e-3)
    p.model.train()
    losses: list[float] = []
    reached: int | None = None
    for step in range(MAX_STEPS):
        opt.zero_grad(set_to_none=True)
        loss = p.loss(p.model(x), y)
        lv = float(loss.detach())
        losses.append(lv)
        if not math.isfinite(lv):
            break
        if lv <= TARGET * losses[0]:
            reached = step
            break
        loss.backward()
        opt.step()
    with torch.no_grad():
        p.model.eval()
        out = p.model(x)
        fit = p.metric.batch_sum(out, y) / len(y) if p.metric and p.metric.name == "accuracy" else None
    ev = {
        "batch": len(y),
        "max_steps": MAX_STEPS,
        "target_fraction": TARGET,
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "reached_at_step": reached,
        "batch_accuracy": fit,
        "loss_curve": losses[:: max(1, len(losses) // 50)],
    }
    if reached is None:
        return CheckResult(
            "overfit_batch",
            "FAIL",
            f"could not overfit one batch of {len(y)}: loss {losses[0]:.4g} → {losses[-1]:.4g} in "
            f"{len(losses)} steps (target {TARGET:g}x the first); the model or the loss is wired wrong",
            ev,
        )
    return CheckResult(
        "overfit_batch",
        "PASS",
        f"loss on one batch of {len(y)} fell {losses[0]:.4g} → {losses[-1]:.4g} by step {reached}",
        ev,
    )
