"""The test plan: scenario parameters and SLO thresholds, from the performance-test
template users bring (all overridable in the --slo-file YAML), and the phases a
scenario runs through."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MIB = 1024 * 1024
# A plan: section -> key -> value, every key of DEFAULTS present.
Plan = dict[str, dict[str, Any]]

# The template's numbers. Every key can be overridden in the SLO file.
DEFAULTS: dict[str, dict[str, Any]] = {
    "latency": {
        "users": 1,
        "batch_size": 1,
        "duration_s": 60,
        "p50_ms": None,
        "p95_ms": None,
        "p99_ms": 100.0,
    },
    "throughput": {"batch_sizes": [1, 8, 16, 32], "users": 4, "phase_s": 20, "min_samples_per_s": 100.0},
    "batch": {"batch_size": 32, "users": 1, "duration_s": 30, "max_latency_ms": 1000.0, "percentile": 99.0},
    "memory": {"users": 4, "batch_size": 1, "duration_s": 30, "max_peak_bytes": 2 * 1000**3},
    "concurrency": {"users": 4, "requests_per_user": 20, "batch_size": 1},
    "soak": {
        "users": 4,
        "batch_size": 1,
        "duration_s": 3600,
        "p99_ms": None,
        "max_memory_bytes": None,
        "leak_warmup_s": 300,
        "leak_alpha": 0.01,
        "min_leak_bytes_per_hour": MIB,
        # Latency drift: the trend of the slices' p99 (loadtest.slices), after a warm-up.
        "drift_warmup_s": 60.0,
        "drift_min_slices": 8,
        "max_p99_drift_ms_per_hour": 0.0,
    },
    "stress": {
        "start_users": 1,
        "max_users": 256,
        "step_factor": 2.0,
        "step_s": 15,
        "batch_size": 1,
        "rates": None,
        "p99_ms": 100.0,
        "max_error_ratio": 0.01,
    },
    "spike": {
        "base_users": 4,
        "spike_users": 32,
        "base_s": 20,
        "spike_s": 10,
        "recovery_s": 30,
        "batch_size": 1,
        "p99_ms": None,
        "recovery_factor": 1.5,
    },
    # min_sustained_ratio: open loop, successful answers/s over offered sends/s.
    "errors": {"max_error_ratio": 0.0, "max_dropped_ratio": 0.0, "min_sustained_ratio": 0.95},
    "regression": {"max_p99_increase": 0.10, "max_throughput_decrease": 0.10},
    "validity": {
        "max_cpu_percent": 90.0,
        "max_saturated_fraction": 0.10,
        "max_late_fraction": 0.01,
        # Percentile confidence intervals, and the sample count an SLO's percentile needs (loadtest.stats).
        "percentile_confidence": 0.99,
    },
    # A request is "good" when it succeeds within latency_ms (None: the p99 threshold of its phase's SLO).
    "goodput": {"latency_ms": None},
}
TEMPLATE_PARTS = ("latency", "throughput", "batch", "memory", "concurrency")


class PlanError(ValueError):
    """The SLO file is malformed; the message names the key and what was expected."""


def load_plan(path: Path | None) -> Plan:
    plan = copy.deepcopy(DEFAULTS)
    if path is None:
        return plan
    if not path.is_file():
        raise PlanError(f"SLO file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PlanError(f"SLO file {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise PlanError(f"SLO file {path}: expected a mapping of sections {sorted(DEFAULTS)}")
    for section, values in doc.items():
        if section not in DEFAULTS:
            raise PlanError(
                f"SLO file {path}: unknown section {section!r}; expected some of {sorted(DEFAULTS)}"
            )
        if not isinstance(values, dict):
            raise PlanError(f"SLO file {path}: section {section!r} must be a mapping")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise PlanError(
                    f"SLO file {path}: unknown key {section}.{key}; expected some of {sorted(DEFAULTS[section])}"
                )
            default = DEFAULTS[section][key]
            if default is not None and value is not None and not isinstance(value, type(default)):
                if isinstance(default, float) and isinstance(value, int):
                    value = float(value)
                else:
                    raise PlanError(
                        f"SLO file {path}: {section}.{key} = {value!r}; expected a {type(default).__name__}"
                    )
            plan[section][key] = value
    return plan


def explicit_keys(path: Path | None) -> set[str]:
    """The "section.key" names the SLO file sets itself (read after load_plan
    has validated it): thresholds a user wrote down must be judged or refused."""
    if path is None:
        return set()
    doc = yaml.safe_load(path.read_text()) or {}
    return {f"{section}.{key}" for section, values in doc.items() for key in (values or {})}


@dataclass(frozen=True)
class Phase:
    """A stretch of the run with one load level; its requests carry `name`."""

    name: str
    kind: str
    users: int
    duration_s: float | None
    batch_size: int
    rate: float = 0.0  # open loop: requests/s over all workers; 0: closed loop
    requests_per_user: int = 0  # > 0: each user sends this many, then idles
    spawn_rate: float = 0.0  # 0: all users at once

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def phases_for(scenario: str, plan: Plan, batch_size: int, rate: float) -> list[Phase]:
    """The fixed phases of a scenario (stress adds its steps as it goes)."""
    if scenario == "template":
        return [p for part in TEMPLATE_PARTS for p in phases_for(part, plan, batch_size, 0.0)]
    p = plan.get(scenario, {})
    if scenario == "latency":
        return [Phase("latency", "latency", p["users"], p["duration_s"], p["batch_size"], rate)]
    if scenario == "throughput":
        return [
            Phase(f"throughput[bs={bs}]", "throughput", p["users"], p["phase_s"], int(bs))
            for bs in p["batch_sizes"]
        ]
    if scenario == "batch":
        return [Phase(f"batch[bs={p['batch_size']}]", "batch", p["users"], p["duration_s"], p["batch_size"])]
    if scenario == "memory":
        return [Phase("memory", "memory", p["users"], p["duration_s"], p["batch_size"], rate)]
    if scenario == "concurrency":
        users, each = p["users"], p["requests_per_user"]
        return [Phase("concurrency", "concurrency", users, None, p["batch_size"], requests_per_user=each)]
    if scenario == "soak":
        return [Phase("soak", "soak", p["users"], p["duration_s"], p["batch_size"], rate)]
    if scenario == "spike":
        return [
            Phase("spike:before", "spike", p["base_users"], p["base_s"], p["batch_size"], rate),
            Phase("spike:peak", "spike", p["spike_users"], p["spike_s"], p["batch_size"], rate * 4),
            Phase("spike:after", "spike", p["base_users"], p["recovery_s"], p["batch_size"], rate),
        ]
    if scenario == "stress":
        return [stress_step(plan, 0, rate)]
    return []


def stress_step(plan: Plan, index: int, rate: float) -> Phase:
    p = plan["stress"]
    rates = p["rates"]
    if rates:
        r = float(rates[min(index, len(rates) - 1)])
        return Phase(f"stress[rate={r:g}]", "stress", max(8, int(r)), p["step_s"], p["batch_size"], r)
    if rate > 0:
        r = rate * p["step_factor"] ** index
        return Phase(f"stress[rate={r:g}]", "stress", max(8, int(r)), p["step_s"], p["batch_size"], r)
    users = round(p["start_users"] * p["step_factor"] ** index)
    return Phase(f"stress[users={users}]", "stress", users, p["step_s"], p["batch_size"])


def stress_has_next(plan: Plan, index: int, rate: float) -> bool:
    p = plan["stress"]
    if p["rates"]:
        return index + 1 < len(p["rates"])
    if rate > 0:
        return True
    return stress_step(plan, index + 1, rate).users <= p["max_users"]
