"""LR schedule trace: the learning rate of every step, replayed from the schedule's own
definition (closed forms; the plateau rule on the recorded validation losses) and compared."""

from __future__ import annotations

import itertools
import math

from training.checks.context import CheckContext
from training.optim import warmup_cosine_factor
from training.runner import TrainResult
from training.summary import CheckResult

RTOL = 1e-6


def expected_trace(res: TrainResult, params: dict[str, float], name: str) -> list[float] | str:
    """The LR each step should have used, or a reason it cannot be replayed exactly."""
    base, n = params["base_lr"], res.steps
    total = int(params["total_steps"])
    spe = max(1, total // max(1, res.config.epochs or 1))
    if name == "constant":
        return [base] * n
    if name == "step":
        return [base * params["gamma"] ** ((i // spe) // int(params["step_size"])) for i in range(n)]
    if name == "cosine":
        eta = params["eta_min"]
        return [eta + (base - eta) * (1 + math.cos(math.pi * i / total)) / 2 for i in range(n)]
    if name == "warmup_cosine":
        ratio = params["eta_min"] / base
        return [base * warmup_cosine_factor(i, int(params["warmup_steps"]), total, ratio) for i in range(n)]
    if name == "plateau":
        lr, best, bad, out = base, math.inf, 0, []
        for e in res.epochs[1:]:
            out += [lr] * spe
            if e.val_loss < best * (1 - params["threshold"]):
                best, bad = e.val_loss, 0
            else:
                bad += 1
                if bad > params["patience"]:
                    lr, bad = lr * params["factor"], 0
        return out[:n]
    return "onecycle is checked by its shape"


def _onecycle(trace: list[float], params: dict[str, float]) -> tuple[bool, str, dict[str, object]]:
    total = int(params["total_steps"])
    peak = max(range(len(trace)), key=lambda i: trace[i])
    want = round(params["pct_start"] * total) - 1
    rising = all(b >= a for a, b in itertools.pairwise(trace[: peak + 1]))
    falling = all(b <= a for a, b in itertools.pairwise(trace[peak:]))
    ok = (
        rising
        and falling
        and abs(peak - want) <= 1
        and math.isclose(trace[peak], params["max_lr"], rel_tol=0.02)
    )
    ev: dict[str, object] = {
        "peak_step": peak,
        "expected_peak_step": want,
        "peak_lr": trace[peak],
        "max_lr": params["max_lr"],
    }
    return (
        ok,
        f"rose to {trace[peak]:.3g} at step {peak} (expected {params['max_lr']:.3g} at ~{want}) and fell",
        ev,
    )


def check_lr_schedule(ctx: CheckContext) -> CheckResult:
    res = ctx.main
    p = ctx.prepared
    from training.optim import make_optimizer, make_schedule

    steps_per_epoch = max(1, math.ceil(len(p.train) / (res.config.batch_size or 1)))  # type: ignore[arg-type]
    if res.config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, res.config.max_steps_per_epoch)
    probe = make_optimizer("sgd", [next(p.model.parameters())], res.config.lr or 1.0)
    params = make_schedule(
        res.config.schedule, probe, steps_per_epoch, res.config.epochs or 1, **res.config.schedule_kw
    ).params
    trace = res.step_lr
    name = res.config.schedule
    ev: dict[str, object] = {
        "schedule": name,
        "params": params,
        "steps": len(trace),
        "first_lr": trace[0] if trace else None,
        "last_lr": trace[-1] if trace else None,
    }
    if not trace:
        return CheckResult("lr_schedule", "FAIL", "no step ran, so no learning rate was recorded", ev)
    if name == "onecycle":
        ok, txt, extra = _onecycle(trace, params)
        ev |= extra
        return CheckResult("lr_schedule", "PASS" if ok else "FAIL", f"onecycle {txt}", ev)
    want = expected_trace(res, params, name)
    assert isinstance(want, list)
    bad = next(
        (
            i
            for i, (g, w) in enumerate(zip(trace, want, strict=False))
            if not math.isclose(g, w, rel_tol=RTOL, abs_tol=1e-12)
        ),
        None,
    )
    if bad is not None:
        ev |= {"first_wrong_step": bad, "got": trace[bad], "expected": want[bad]}
        return CheckResult(
            "lr_schedule",
            "FAIL",
            f"{name}: step {bad} ran at LR {trace[bad]:.4g}, the schedule says {want[bad]:.4g}",
            ev,
        )
    changes = [i for i in range(1, len(trace)) if trace[i] != trace[i - 1]]
    ev["change_steps"] = changes[:50]
    if name == "plateau":
        drops = [i for i in changes if trace[i] < trace[i - 1]]
        ev["reductions_at_steps"] = drops
        if not drops:
            return CheckResult(
                "lr_schedule",
                "WARN",
                "plateau: validation loss never plateaued, so the LR was never reduced",
                ev,
            )
        return CheckResult(
            "lr_schedule",
            "PASS",
            f"plateau reduced the LR {len(drops)}x after validation plateaus (steps {drops[:5]}), "
            f"{trace[0]:.3g} → {trace[-1]:.3g}",
            ev,
        )
    return CheckResult(
        "lr_schedule",
        "PASS",
        f"{name}: all {len(trace)} step LRs match the schedule ({trace[0]:.3g} → {trace[-1]:.3g})",
        ev,
    )
