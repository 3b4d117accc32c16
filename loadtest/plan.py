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

# The template's numbers. Every key can be overridden in the SLO file; the comment
# beside a key (or above a section) is its line in the docs' plan reference.
DEFAULTS: dict[str, dict[str, Any]] = {
    # --scenario latency: one phase at a fixed load, judged by its percentiles.
    "latency": {
        "users": 1,  # closed-loop users (with --arrival-rate: in-flight slots)
        "batch_size": 1,  # samples per request
        "duration_s": 60,  # the phase's length
        "p50_ms": None,  # a median the phase must stay under (null: not judged)
        "p95_ms": None,  # a p95 the phase must stay under (null: not judged)
        "p99_ms": 100.0,  # a p99 the phase must stay under (warm-up excluded)
    },
    # --scenario throughput: one phase per batch size, each judged by its samples/s.
    "throughput": {
        "batch_sizes": [1, 8, 16, 32],  # one phase each
        "users": 4,  # closed-loop users in each phase
        "phase_s": 20,  # each phase's length
        "min_samples_per_s": 100.0,  # samples/s every phase must reach
    },
    # --scenario batch: large batches, judged by a percentile of their latency.
    "batch": {
        "batch_size": 32,  # samples per request
        "users": 1,  # closed-loop users
        "duration_s": 30,  # the phase's length
        "max_latency_ms": 1000.0,  # the latency the percentile must stay under
        "percentile": 99.0,  # the percentile judged
    },
    # --scenario memory: the server's peak memory under load (needs --server-metrics-url).
    "memory": {
        "users": 4,  # closed-loop users
        "batch_size": 1,  # samples per request
        "duration_s": 30,  # the phase's length
        "max_peak_bytes": 2 * 1000**3,  # ceiling of the peak: CUDA peak allocated on a GPU, else RSS
    },
    # --scenario concurrency: every user sends a fixed count; all must succeed.
    "concurrency": {
        "users": 4,  # concurrent clients
        "requests_per_user": 20,  # requests each sends
        "batch_size": 1,  # samples per request
    },
    # --scenario soak: a long phase; the server's memory trend is tested for a leak, the slices' p99 for drift.
    "soak": {
        "users": 4,  # closed-loop users
        "batch_size": 1,  # samples per request
        "duration_s": 3600,  # the phase's length
        "p99_ms": None,  # a p99 the soak must stay under (null: not judged)
        "max_memory_bytes": None,  # a ceiling of the server's memory (null: not judged)
        "leak_warmup_s": 300,  # memory samples of the first seconds left out of the leak test
        "leak_alpha": 0.01,  # significance level of the trend test (Mann-Kendall)
        "min_leak_bytes_per_hour": MIB,  # growth below this is no leak, however significant
        # Latency drift: the trend of the slices' p99 (loadtest.slices), after a warm-up.
        "drift_warmup_s": 60.0,  # slices of the first seconds left out of the drift test
        "drift_min_slices": 8,  # slices the drift test needs
        "max_p99_drift_ms_per_hour": 0.0,  # p99 growth allowed per hour
    },
    # --scenario stress: load stepped up until a step breaks the SLO; the report names the knee.
    "stress": {
        "start_users": 1,  # users of the first step
        "max_users": 256,  # the last step's users at most
        "step_factor": 2.0,  # users (or rate) multiply by this from step to step
        "step_s": 15,  # each step's length
        "batch_size": 1,  # samples per request
        "rates": None,  # open-loop requests/s of the steps, in order (null: closed-loop user steps)
        "p99_ms": 100.0,  # a step holds while its p99 stays under this ...
        "max_error_ratio": 0.01,  # ... and its failed requests under this share
    },
    # --scenario spike: a base load, a spike, and the recovery after it.
    "spike": {
        "base_users": 4,  # users before and after the spike
        "spike_users": 32,  # users during the spike
        "base_s": 20,  # the base phase's length
        "spike_s": 10,  # the spike's length
        "recovery_s": 30,  # the recovery phase's length
        "batch_size": 1,  # samples per request
        "p99_ms": None,  # a p99 every phase must stay under (null: not judged)
        "recovery_factor": 1.5,  # the recovery's p99 may be at most this times the base's
    },
    # The capacity search (loadtest.capacity): the highest open-loop rate whose step holds the SLO.
    "capacity": {
        "percentile": 99.0,  # one of 50, 90, 95, 99, 99.9 (the percentiles with a confidence interval)
        "latency_ms": 100.0,  # the latency that percentile must stay under
        "max_error_ratio": 0.01,  # the share of failed requests a step may have
        "start_rate": 10.0,  # --arrival-rate, when given, starts the ramp instead
        "growth": 2.0,  # the ramp multiplies the rate by this until a step fails
        "precision": 0.05,  # the search stops when (high - low) <= precision x low
        "min_rate": 0.5,  # the lowest rate tried
        "max_rate": 100000.0,  # the highest rate tried
        "max_steps": 30,  # steps at most
        "min_step_s": 2.0,  # a step's shortest length (longer when its percentile needs more samples)
        "max_step_s": 600.0,  # a step's longest length
        "settle_s": 1.0,  # a quiet gap after each step: its last answers arrive before it is judged
        "batch_size": 1,  # samples per request
        "min_capacity": None,  # requests/s the found capacity must reach for a PASS
    },
    # Errors of every scenario.
    "errors": {
        "max_error_ratio": 0.0,  # failed requests / requests
        "max_dropped_ratio": 0.0,  # open loop: sends dropped or unfinished at stop / scheduled
        "min_sustained_ratio": 0.95,  # open loop: successful answers/s over offered sends/s
    },
    # Against --baseline (an earlier run's summary.json).
    "regression": {
        "max_p99_increase": 0.10,  # p99 may grow by this share at most
        "max_throughput_decrease": 0.10,  # throughput may fall by this share at most
        "alpha": 0.05,  # with --repeat on both sides, a change is significant when Welch's p-value is below it
    },
    # When the generator itself could not measure: the run is INVALID, not PASS or FAIL.
    "validity": {
        "max_cpu_percent": 90.0,  # a worker above this CPU share counts as saturated ...
        "max_saturated_fraction": 0.10,  # ... and saturated for more than this share of the run invalidates it
        "max_late_fraction": 0.01,  # open loop: share of sends the dispatcher may send over 50 ms late
        # Event-loop ticks of a generator process that may wake late (> 20 ms): more, and the
        # process was short of CPU (its own, or taken by others), so its latencies include its delays.
        "max_lagged_fraction": 0.25,
        # Percentile confidence intervals, and the sample count an SLO's percentile needs (loadtest.stats).
        "percentile_confidence": 0.99,
    },
    # A request is "good" when it succeeds within latency_ms (null: the p99 threshold of its phase's SLO).
    "goodput": {"latency_ms": None},
    # Token-streaming protocols (--protocol openai / kserve-stream): SLOs on every measured phase, and
    # what makes a streamed request "good" (all of ttft_ms, tpot_ms and e2e_ms that are set).
    "streaming": {
        "ttft_p99_ms": None,  # a p99 time to first token every phase must stay under (null: not judged)
        "tpot_p99_ms": None,  # a p99 time per output token every phase must stay under (null: not judged)
        "itl_p99_ms": None,  # a p99 inter-token latency every phase must stay under (null: not judged)
        "ttft_ms": None,  # goodput: a good request's first token came within this (null: any)
        "tpot_ms": None,  # goodput: ... and its time per output token was within this (null: any)
        "e2e_ms": None,  # goodput: ... and it ended within this (null: any)
    },
}
TEMPLATE_PARTS = ("latency", "throughput", "batch", "memory", "concurrency")


def good_limits(plan: Plan) -> dict[str, float]:
    """The plan's goodput limits on streamed requests (ms), those it sets."""
    limits = plan["streaming"]
    return {k: float(limits[k]) for k in ("ttft_ms", "tpot_ms", "e2e_ms") if limits.get(k) is not None}


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
    _check_capacity(path, plan["capacity"])
    return plan


CAPACITY_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def _check_capacity(path: Path, c: dict[str, Any]) -> None:
    if float(c["percentile"]) not in CAPACITY_PERCENTILES:
        raise PlanError(
            f"SLO file {path}: capacity.percentile = {c['percentile']!r}; expected one of "
            f"{', '.join(f'{q:g}' for q in CAPACITY_PERCENTILES)}"
        )
    positive = ("latency_ms", "start_rate", "min_rate", "max_rate", "precision", "min_step_s", "settle_s")
    for key in positive:
        if float(c[key]) <= 0:
            raise PlanError(f"SLO file {path}: capacity.{key} = {c[key]!r}; expected a number > 0")
    if float(c["growth"]) <= 1:
        raise PlanError(f"SLO file {path}: capacity.growth = {c['growth']!r}; expected a factor > 1")


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
    return []  # capacity: the search makes its steps as it goes (loadtest.capacity)


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
