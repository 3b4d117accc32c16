"""Typed results, written to `training_summary.json` and read back through the same types."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEMA_VERSION = 1
Status = Literal["PASS", "WARN", "FAIL", "INVALID"]
EXIT_PASS, EXIT_SETUP, EXIT_FAIL, EXIT_INVALID = 0, 2, 3, 4


@dataclass
class CheckResult:
    name: str
    status: Status
    detail: str  # one sentence a test engineer can act on
    evidence: dict[str, Any] = field(default_factory=dict)  # layer, step, values


@dataclass
class TrainingSummary:
    kind: str  # check | sweep | compare-optimizers | compare
    run_id: str
    config: dict[str, Any]
    provenance: dict[str, Any]
    checks: list[CheckResult] = field(default_factory=list)
    task: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)  # per-epoch and per-step series
    study: dict[str, Any] = field(default_factory=dict)  # cells / optimizers / models
    verdict: str = "PASS"
    exit_code: int = EXIT_PASS
    created_unix: float = field(default_factory=time.time)
    schema_version: int = SCHEMA_VERSION

    def judge(self) -> None:
        """INVALID (could not measure) outranks FAIL, which outranks WARN and PASS."""
        statuses = {c.status for c in self.checks}
        if "INVALID" in statuses:
            self.verdict, self.exit_code = "INVALID", EXIT_INVALID
        elif "FAIL" in statuses:
            self.verdict, self.exit_code = "FAIL", EXIT_FAIL
        else:
            self.verdict = "WARN" if "WARN" in statuses else "PASS"
            self.exit_code = EXIT_PASS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "training_summary.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, default=_jsonable) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingSummary:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"training summary schema_version {d.get('schema_version')!r}; this reader knows {SCHEMA_VERSION}"
            )
        d = dict(d)
        d["checks"] = [CheckResult(**c) for c in d.get("checks", [])]
        return cls(**d)

    @classmethod
    def read(cls, path: Path) -> TrainingSummary:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON-serialisable: {type(v).__name__}")


def downsample(values: list[float], n: int = 200) -> list[float]:
    """At most n evenly spaced points (first and last kept), for plots and the JSON."""
    if len(values) <= n:
        return list(values)
    step = (len(values) - 1) / (n - 1)
    return [values[round(i * step)] for i in range(n)]
