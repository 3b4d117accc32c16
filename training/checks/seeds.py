"""Stability across seeds (mean ± std of the final validation metric) and reproducibility
(one seed twice gives the same loss curve: bit-identical on CPU, within a tolerance on CUDA)."""

from __future__ import annotations

import math
import statistics

from training.checks.context import REPEAT_STEPS, CheckContext
from training.summary import CheckResult

COV_FAIL = 0.10
COV_WARN = 0.05
CUDA_RTOL = 1e-4  # without deterministic algorithms, CUDA reductions reorder


def check_seed_stability(ctx: CheckContext) -> CheckResult:
    runs = ctx.seed_runs()
    use_metric = ctx.main.metric is not None
    name = ctx.main.metric if use_metric else "val_loss"
    finals = {s: (r.final.val_metric if use_metric else r.final.val_loss) for s, r in runs.items()}
    diverged = sorted(s for s, r in runs.items() if r.nonfinite is not None)
    ev: dict[str, object] = {"metric": name, "per_seed": finals, "diverged_seeds": diverged}
    if diverged:
        return CheckResult("seed_stability", "FAIL", f"seeds {diverged} went non-finite", ev)
    vals = [float(v) for v in finals.values() if v is not None]
    if len(vals) < 2:
        return CheckResult("seed_stability", "INVALID", f"needs ≥ 2 seeds, ran {len(vals)}", ev)
    mean, std = statistics.fmean(vals), statistics.stdev(vals)
    cov = std / abs(mean) if mean else math.inf
    ev |= {"mean": mean, "std": std, "cov": cov, "cov_fail": COV_FAIL}
    txt = f"final {name} {mean:.4g} ± {std:.2g} over {len(vals)} seeds (CoV {cov:.2%})"
    if cov > COV_FAIL:
        return CheckResult("seed_stability", "FAIL", f"{txt} > {COV_FAIL:.0%}", ev)
    if cov > COV_WARN:
        return CheckResult("seed_stability", "WARN", f"{txt} > {COV_WARN:.0%}", ev)
    return CheckResult("seed_stability", "PASS", txt, ev)


def check_reproducibility(ctx: CheckContext) -> CheckResult:
    b = ctx.repeat.step_loss
    a = ctx.main.step_loss[:REPEAT_STEPS]
    cuda = ctx.main.device.startswith("cuda")
    exact = not cuda or ctx.config.deterministic
    tol = 0.0 if exact else CUDA_RTOL
    ev: dict[str, object] = {
        "steps": [len(a), len(b)],
        "seed": ctx.config.seed,
        "device": ctx.main.device,
        "tolerance_rel": tol,
        "bit_identical_required": exact,
    }
    first_diff = next(
        (
            i
            for i, (x, y) in enumerate(zip(a, b, strict=False))
            if abs(x - y) > tol * max(abs(x), abs(y)) and x != y
        ),
        None,
    )
    if first_diff is None and len(a) != len(b):
        first_diff = min(len(a), len(b))
    if first_diff is not None:
        ev |= {
            "first_diff_step": first_diff,
            "values": [
                a[first_diff] if first_diff < len(a) else None,
                b[first_diff] if first_diff < len(b) else None,
            ],
        }
        return CheckResult(
            "reproducibility",
            "FAIL",
            f"seed {ctx.config.seed} twice: loss curves differ from step {first_diff}",
            ev,
        )
    max_diff = max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)
    ev["max_abs_diff"] = max_diff
    how = "bit-identical" if max_diff == 0 else f"within rel {tol:g} (max diff {max_diff:.2g})"
    return CheckResult(
        "reproducibility", "PASS", f"seed {ctx.config.seed} twice: the first {len(a)} step losses {how}", ev
    )
