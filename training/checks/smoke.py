"""Smoke: a few real steps run, the loss stays finite, and every trainable parameter changes."""

from __future__ import annotations

import math

import torch

from training.checks.context import CheckContext
from training.runner import train
from training.summary import CheckResult

STEPS = 5


def check_smoke(ctx: CheckContext) -> CheckResult:
    p = ctx.fresh(epochs=1, max_steps_per_epoch=STEPS, schedule="constant", schedule_kw={})
    res = train(p, record_updates=False)
    ev: dict[str, object] = {"steps": res.steps, "losses": res.step_loss, "device": res.device}
    if res.nonfinite is not None:
        nf = res.nonfinite
        ev |= {"step": nf.step, "where": nf.where}
        return CheckResult(
            "smoke", "FAIL", f"the {nf.kind} went non-finite at step {nf.step} ({nf.where})", ev
        )
    if not all(math.isfinite(v) for v in res.step_loss):
        return CheckResult("smoke", "FAIL", "a step's loss is not finite", ev)
    unchanged = [n for n in res.param_order if torch.equal(res.initial_params[n], res.final_params[n])]
    ev["unchanged_params"] = unchanged
    ev["trainable_params"] = len(res.param_order)
    if unchanged:
        head = ", ".join(unchanged[:5]) + (f" and {len(unchanged) - 5} more" if len(unchanged) > 5 else "")
        return CheckResult(
            "smoke",
            "FAIL",
            f"{len(unchanged)} of {len(res.param_order)} trainable parameters did not change in "
            f"{res.steps} steps: {head}",
            ev,
        )
    return CheckResult(
        "smoke",
        "PASS",
        f"{res.steps} steps ran, loss finite ({res.step_loss[0]:.4g} → {res.step_loss[-1]:.4g}), "
        f"all {len(res.param_order)} trainable parameters changed",
        ev,
    )
