"""pytest plugin for performance tests on modelsoak (entry point `pytest11`).

Fixtures `served_model`, `load_test`, `training_run`; markers `performance`,
`soak`, `gpu`; options `--modelsoak-duration`, `--modelsoak-results`,
`--modelsoak-baseline`; `expect()` for assertions that name the metric, the
target, the measured value and the report. See docs/how-to/ci-regression.md, "pytest plugin".
"""

from __future__ import annotations

from typing import Any

from modelsoak_pytest.expect import expect

__all__ = ["LoadResult", "ServedModel", "TrainingResult", "expect"]


def __getattr__(name: str) -> Any:
    # The result types import the load generator and training packages: only when asked
    # for, so every pytest run that loads the plugin does not pay for them.
    if name in ("LoadResult", "ServedModel", "TrainingResult"):
        from modelsoak_pytest import processes

        return getattr(processes, name)
    raise AttributeError(name)
