"""The nine training checks. Each takes the shared CheckContext and returns a CheckResult
(PASS / WARN / FAIL, or INVALID when it could not measure) with its evidence."""

from __future__ import annotations

from collections.abc import Callable

from training.checks.context import CheckContext
from training.checks.convergence import check_convergence, check_overfitting
from training.checks.gradients import check_gradient_flow
from training.checks.numerics import check_numerics
from training.checks.overfit import check_overfit_batch
from training.checks.schedule import check_lr_schedule
from training.checks.seeds import check_reproducibility, check_seed_stability
from training.checks.smoke import check_smoke
from training.summary import CheckResult

CHECKS: dict[str, Callable[[CheckContext], CheckResult]] = {
    "smoke": check_smoke,
    "gradient_flow": check_gradient_flow,
    "overfit_batch": check_overfit_batch,
    "convergence": check_convergence,
    "overfitting": check_overfitting,
    "numerics": check_numerics,
    "seed_stability": check_seed_stability,
    "reproducibility": check_reproducibility,
    "lr_schedule": check_lr_schedule,
}

__all__ = ["CHECKS", "CheckContext", "CheckResult"]
