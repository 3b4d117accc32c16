"""The results of a run as types: `Summary` is summary.json, written from these
dataclasses and read back through them (`--baseline`). The README's "summary.json"
section lists the fields.

`SCHEMA_VERSION` changes whenever a field changes meaning, is renamed or goes;
a summary of another version is refused with a message that says so, rather
than compared field by field with numbers that mean something else."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.codec import SchemaError, from_json, to_json

SCHEMA_VERSION = 2  # 2: percentile confidence intervals, goodput, open-loop accounting, lower bounds
EXIT_PASS, EXIT_SETUP, EXIT_SLO, EXIT_INVALID = 0, 2, 3, 4


@dataclass
class InputInfo:
    name: str
    datatype: str
    shape: list[int]  # one sample's dims (no batch dim when the model batches)


@dataclass
class TargetInfo:
    """The model the run sent to, as the server described it."""

    model: str = ""
    version: str = ""
    platform: str = ""
    server: str = ""
    server_version: str = ""
    sha256: str = ""
    inputs: list[InputInfo] = field(default_factory=list)
    device: str = ""  # where the server runs the model, as its ModelConfig says


@dataclass
class Target(TargetInfo):
    host: str = ""
    protocol: str = ""


@dataclass
class Harness:
    version: str
    git_sha: str


@dataclass
class LocalGpu:
    index: int
    name: str
    memory_total_bytes: int


@dataclass
class Hardware:
    hostname: str
    os: str
    python: str
    cpu: str
    cpu_count: int | None
    memory_bytes: int
    gpus: list[LocalGpu]


@dataclass
class Provenance:
    harness: Harness
    libraries: dict[str, str]
    hardware: Hardware
    target: Target
    # The server's own /stats sections, as it sent them (None: not our server, or no URL).
    server: dict[str, Any] | None
    server_gpu: dict[str, Any] | None
    seed: int
    options: dict[str, str | int | float | bool | None]
    plan: dict[str, dict[str, Any]]
    workers: list[str]


@dataclass
class Bound:
    """A percentile's distribution-free confidence interval (loadtest.stats), ms."""

    n: int  # samples behind it
    needed: int  # the fewest samples that bound this percentile at the confidence
    low: float | None  # None: unbounded at this confidence
    high: float | None
    enough: bool


@dataclass
class Latency:
    """Milliseconds, from the merged HDR histograms (µs resolution)."""

    p50: float
    p90: float
    p95: float
    p99: float
    p99_9: float = field(metadata={"json": "p99.9"})
    min: float
    max: float
    mean: float
    count: int = 0
    confidence: float = 0.0
    # By the plan's names ("p50" ... "p99.9"): the interval at `confidence`.
    ci: dict[str, Bound] = field(default_factory=dict)
    # Percentiles (by name: p50 ... p99.9, max) that are lower bounds: sends
    # unfinished at stop entered with their wait so far, which may sit below them.
    lower_bounds: list[str] = field(default_factory=list)

    def at(self, key: str) -> float | None:
        """By the name a plan uses: p50 ... p99.9, min, max, mean."""
        name = key.replace(".", "_")
        value = getattr(self, name, None)
        return float(value) if isinstance(value, int | float) else None


@dataclass
class Stage:
    mean_ms: float
    p50_ms: float
    p99_ms: float


@dataclass
class PhaseBreakdown:
    """What the server said about its time (ours sends it; others do not)."""

    requests: int
    mean_batch_size: float
    phases: dict[str, Stage]


@dataclass
class PhaseResult:
    name: str
    kind: str
    users: int
    duration_s: float | None
    batch_size: int
    rate: float
    requests_per_user: int
    spawn_rate: float
    started_s: float
    ended_s: float
    requests: int = 0
    failures: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    rps: float = 0.0
    samples_per_s: float = 0.0
    latency_ms: Latency | None = None
    server_breakdown: PhaseBreakdown | None = None
    # Successful requests within the goodput threshold, and their rate.
    good_requests: int = 0
    goodput_rps: float = 0.0
    goodput_latency_ms: float | None = None


@dataclass
class Totals:
    requests: int
    failures: int
    error_ratio: float
    errors_by_status: dict[str, int]
    latency_ms: Latency | None
    rps: float
    samples_per_s: float
    goodput_rps: float = 0.0


@dataclass
class Breakdown:
    """Request-weighted server breakdown over the phases that have one."""

    available: bool
    reason: str = ""
    mean_ms: dict[str, float] = field(default_factory=dict)
    client_mean_ms: float = 0.0
    outside_server_ms: float = 0.0


@dataclass
class Leak:
    source: str
    suspected: bool
    slope_bytes_per_s: float | None
    slope_low_bytes_per_s: float | None
    slope_high_bytes_per_s: float | None
    tau: float | None
    p_value: float | None
    samples: int
    window_s: float | None
    reason: str
    slope_bytes_per_hour: float | None


@dataclass
class MemorySeries:
    t: list[float]  # seconds since the run started
    bytes: list[float]


@dataclass
class Memory:
    available: bool
    reason: str = ""
    source: str = ""
    peak_bytes: float = 0.0
    first_bytes: float = 0.0
    last_bytes: float = 0.0
    samples: int = 0
    peaks: dict[str, float] = field(default_factory=dict)
    leak: Leak | None = None
    series: MemorySeries | None = None


@dataclass
class StressStep:
    name: str
    load: float
    held: bool
    p99_ms: float | None
    samples_per_s: float
    error_ratio: float


@dataclass
class Knee:
    at: str
    load: float
    samples_per_s: float
    p99_ms: float | None


@dataclass
class Stress:
    steps: list[StressStep]
    highest_held: StressStep | None
    knee: Knee | None


@dataclass
class WorkerCpu:
    cpu_max: float
    cpu_mean: float
    saturated_fraction: float


@dataclass
class OpenLoop:
    """Every scheduled send ends measured, dropped or unfinished:
    `scheduled == measured + dropped + unfinished` (`accounted` says it held)."""

    scheduled: int
    late: int
    dropped: int
    late_fraction: float
    max_behind_ms: float
    measured: int = 0  # an answer or an error came back (warm-up sends included)
    unfinished: int = 0  # queued or in flight when the run stopped
    warmup: int = 0  # measured, but excluded from the statistics
    accounted: bool = True
    offered_rps: float = 0.0  # scheduled sends per second of the schedule
    sustained_rps: float = 0.0  # successful answers per second while answering


@dataclass
class Generator:
    """The load generator's own health: a run it could not drive is INVALID."""

    workers: dict[str, WorkerCpu]
    lost_workers: list[str]
    openloop: OpenLoop
    valid: bool
    invalid_reasons: list[str]


@dataclass
class Check:
    name: str
    metric: str
    target: str
    actual: str
    passed: bool
    note: str = ""


@dataclass
class Baseline:
    path: str
    run_id: str
    totals: Totals
    checks: list[Check]


@dataclass
class Slice:
    """One time slice (--slice-s) of a phase: its own throughput and percentiles."""

    phase: str
    t_start: float  # seconds since the run started
    t_end: float
    requests: int  # latencies recorded in the slice (successes; sends unfinished at stop, as lower bounds)
    rps: float | None  # None: a slice without duration (answered or cut off at stop)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p99_enough: bool  # enough samples to bound the p99 at the run's confidence


@dataclass
class Drift:
    """The trend of a soak's p99 over its slices (server.leak's test)."""

    suspected: bool
    slope_ms_per_hour: float | None
    slope_low_ms_per_hour: float | None
    slope_high_ms_per_hour: float | None
    p_value: float | None
    slices: int
    reason: str


@dataclass
class Stability:
    """--stable: a phase's measurement windows and whether the last three agreed."""

    phase: str
    stable: bool
    windows: list[Slice]
    counted: list[int]  # indices into windows of the three that agreed
    rps: float | None  # mean of the counted windows
    p99_ms: float | None
    reason: str


@dataclass
class Summary:
    run_id: str
    scenario: str
    started: float
    ended: float
    duration_s: float
    provenance: Provenance
    phases: list[PhaseResult]
    totals: Totals
    server_breakdown: Breakdown
    memory: Memory
    stress: Stress | None
    generator: Generator
    slo: list[Check]
    baseline: Baseline | None
    verdict: str  # PASS | FAIL | INVALID
    exit_code: int
    schema_version: int = SCHEMA_VERSION
    slices: list[Slice] = field(default_factory=list)
    drift: Drift | None = None
    stability: list[Stability] = field(default_factory=list)

    def to_json(self) -> str:
        doc = to_json(self)
        # schema_version first: the key a reader looks at before any other
        ordered = {"schema_version": doc.pop("schema_version"), **doc}
        return json.dumps(ordered, indent=2) + "\n"

    def write(self, path: Path) -> None:
        path.write_text(self.to_json())

    @classmethod
    def parse(cls, doc: Any, where: str = "summary") -> Summary:
        if not isinstance(doc, dict) or "totals" not in doc:
            raise SchemaError(f"{where}: not a modelsoak summary.json (no 'totals')")
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION:
            seen = (
                "no schema_version (written before modelsoak versioned it)"
                if version is None
                else (f"schema_version {version!r}")
            )
            raise SchemaError(
                f"{where}: {seen}; this modelsoak reads schema_version {SCHEMA_VERSION}: "
                "run the baseline again with this version"
            )
        return from_json(cls, doc, where)

    @classmethod
    def read(cls, path: Path) -> Summary:
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SchemaError(f"{path}: not a readable summary.json ({exc})") from None
        return cls.parse(doc, str(path))
