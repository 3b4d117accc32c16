"""Training test pipeline: checks and studies on a model in training (`modelsoak-train`).

The CLI is a thin layer over this API:

    from training import TrainConfig, run_checks
    result = run_checks(TrainConfig(model="digits-cnn"))
"""

from __future__ import annotations

from typing import Any

from training.config import TrainConfig
from training.errors import InvalidRun, SetupError

__all__ = ["InvalidRun", "SetupError", "TrainConfig", "run_checks"]


def run_checks(config: TrainConfig, **kw: Any) -> Any:
    """Run the checks (all nine by default) and return a TrainingSummary; see training.pipeline."""
    from training.pipeline import run_checks as _run

    return _run(config, **kw)
