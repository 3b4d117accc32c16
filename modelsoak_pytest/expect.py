"""One assertion helper whose failure message a test engineer can act on."""

from __future__ import annotations

import operator
from collections.abc import Callable
from pathlib import Path

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}  # fmt: skip


def expect(
    metric: str, measured: float | None, op: str, target: float, unit: str = "", report: Path | str | None = None
) -> None:
    """Assert `measured <op> target`, e.g. expect("p99 latency", 12.5, "<", 100, "ms", summary_path).

    The message names the metric, the target, the measured value and the report."""
    if op not in _OPS:
        raise ValueError(f"expect({metric!r}): op {op!r}; expected one of {sorted(_OPS)}")
    where = f" (report: {report})" if report else ""
    if measured is None:
        raise AssertionError(f"{metric}: not measured; target {op} {target:g} {unit}{where}".replace("  ", " "))
    if not _OPS[op](float(measured), float(target)):
        raise AssertionError(
            f"{metric}: measured {measured:.4g} {unit}, target {op} {target:g} {unit}{where}".replace("  ", " ")
        )
