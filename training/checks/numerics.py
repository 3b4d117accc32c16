"""Numerical health: the first step where the loss, an activation or a gradient went non-finite
(the run stopped there), over the main run and every seed run made."""

from __future__ import annotations

from training.checks.context import CheckContext
from training.summary import CheckResult


def check_numerics(ctx: CheckContext) -> CheckResult:
    runs = {ctx.config.seed: ctx.main, **ctx._seeds}
    bad = {s: r.nonfinite for s, r in runs.items() if r.nonfinite is not None}
    steps = {s: r.steps for s, r in runs.items()}
    if ctx.config.seed in bad:
        nf = bad[ctx.config.seed]
        assert nf is not None
        r = ctx.main
        ev = {
            "step": nf.step,
            "epoch": nf.epoch,
            "kind": nf.kind,
            "where": nf.where,
            "value": nf.loss,
            "loss_before": r.step_loss[-5:],
            "lr": r.step_lr[-1] if r.step_lr else ctx.config.lr,
            "seeds_nonfinite": sorted(bad),
        }
        where = "" if nf.where == "loss" else f" in {nf.where}"
        return CheckResult(
            "numerics",
            "FAIL",
            f"the {nf.kind} became non-finite ({nf.loss:.3g}){where} at step {nf.step} "
            f"(epoch {nf.epoch}); the run stopped there",
            ev,
        )
    if bad:
        s, nf = next(iter(sorted(bad.items())))
        assert nf is not None
        return CheckResult(
            "numerics",
            "FAIL",
            f"seed {s}: the {nf.kind} became non-finite in {nf.where} at step {nf.step}",
            {"seed": s, "step": nf.step, "kind": nf.kind, "where": nf.where},
        )
    return CheckResult(
        "numerics",
        "PASS",
        f"loss and gradients finite on every step of {len(runs)} run(s) ({sum(steps.values())} steps)",
        {"steps_per_seed": steps},
    )
