"""The results of a run as types: `Summary` is summary.json, written from these
dataclasses and read back through them (`--baseline`). The docs' summary.json
reference (docs/reference/summary.md) is made from them.

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
    metrics_url: str = ""  # where the server says its Prometheus metrics are ("" when it does not)


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
    # The merged histogram's percentile distribution, [percentile, ms] pairs from
    # the median to the maximum, log-spaced in 1/(1 - q) (the report's HDR plot).
    distribution: list[list[float]] = field(default_factory=list)

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
    # Distributed runs: the fewest users actually running once the phase had all
    # of them (None: not sampled), and for how many seconds it ran with fewer.
    users_running_min: int | None = None
    reduced_load_s: float = 0.0
    # The client's view of a successful request, means in ms: "send_wait" (open
    # loop: scheduled until sent, waiting for a free user) and "call" (sent until
    # answered). None when nothing succeeded.
    client_split_ms: dict[str, float] | None = None
    streaming: Streaming | None = None  # streamed requests' token timings (loadtest.stream_summary)


@dataclass
class Streaming:
    """Token-streamed requests (--protocol openai / kserve-stream): time to first
    token, inter-token latency and time per output token, exact percentiles of the
    merged histograms (ms); tokens and goodput."""

    streams: int
    ttft_ms: Latency | None
    itl_ms: Latency | None
    tpot_ms: Latency | None
    prompt_tokens: int
    output_tokens: int
    output_tokens_per_s: float
    # Where the token counts came from: "usage" (the server's own), "counted" (one
    # piece of text per token, here), or "mixed".
    tokens_source: str
    # Streams within every goodput limit (ttft_ms, tpot_ms, e2e_ms) the plan sets,
    # and their rate; no limits set: every successful stream is good.
    good_streams: int = 0
    goodput_rps: float = 0.0
    good_limits_ms: dict[str, float] = field(default_factory=dict)
    # The server's own split where it reports one (our server; means, ms): "queue"
    # (waiting for a sequence slot), "prefill", "ttft" (arrival to first token, the
    # two before included) and "decode" (first token to end).
    server_split_ms: dict[str, float] = field(default_factory=dict)
    # Where the server stamps each token's send (our server, probes on): for every gap
    # between tokens, |the client's gap - the server's gap|, i.e. what the way from the
    # server's send to the client's read added to or took from it (ms).
    itl_added_ms: Latency | None = None


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
    streaming: Streaming | None = None


@dataclass
class Breakdown:
    """Request-weighted server breakdown over the phases that have one."""

    available: bool
    reason: str = ""
    mean_ms: dict[str, float] = field(default_factory=dict)
    client_mean_ms: float = 0.0
    outside_server_ms: float = 0.0
    # outside_server_ms split: waiting for a send slot (open loop), and transport
    # (the call less the server's own total: network, serialisation, client).
    send_wait_ms: float = 0.0
    transport_ms: float = 0.0


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
    # Event-loop ticks that woke late (loadtest.recorder.LOOP_LAGGED_S), and the worst lag.
    loop_lagged_fraction: float = 0.0
    loop_lag_max_ms: float = 0.0


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
    # How late the dispatcher woke for its sends: the median and p99 as the upper
    # bound of their bucket (loadtest.recorder.LAG_BOUNDS_US), 0 with no sends.
    behind_p50_ms: float = 0.0
    behind_p99_ms: float = 0.0


@dataclass
class Generator:
    """The load generator's own health: a run it could not drive is INVALID."""

    workers: dict[str, WorkerCpu]
    lost_workers: list[str]
    openloop: OpenLoop
    valid: bool
    invalid_reasons: list[str]
    # A distributed run's master: its CPU and event-loop lag (a master late on its
    # loop is late with heartbeats, phase changes and the series). None when local.
    master: WorkerCpu | None = None


@dataclass
class Event:
    """Something that happened at a time of the run (seconds since its start),
    for the charts' markers and the report: "phase" (one began), "worker_lost",
    "unreachable" (the target refused calls, from t for duration_s), "slo_broken"
    (the first series interval whose p99 broke a phase's p99 target)."""

    t_s: float
    kind: str
    detail: str
    duration_s: float = 0.0


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
class WarmupResult:
    """What the run left out of its statistics as warm-up: defined per run
    (loadtest.warmup), the same in open and closed loop."""

    seconds: float  # --warmup-s: requests sent in the run's first seconds
    requests: int  # --warmup-requests: the run's first requests, all workers together
    excluded: int  # requests sent, answered and left out


@dataclass
class CapacityStep:
    """One step of the capacity search (loadtest.capacity): an open-loop rate, held for its length."""

    name: str
    offered_rps: float
    delivered_rps: float  # successful answers per second
    percentile: str  # the plan's, e.g. "p99"
    latency_ms: float | None
    ci_low_ms: float | None  # its confidence interval at the run's confidence
    ci_high_ms: float | None
    samples: int
    needed: int  # samples that bound the percentile
    error_ratio: float  # failed or unfinished / requests
    goodput_rps: float
    passed: bool
    cut_short: bool  # ended early: clearly over-saturated
    reason: str  # why it failed, or was cut short


@dataclass
class Capacity:
    """The highest open-loop rate at which the SLO held, and the bracket around it."""

    found_rps: float | None  # None: no step held
    low_rps: float | None  # the bracket: the highest rate that held ...
    high_rps: float | None  # ... and the lowest above it that did not (None: never failed)
    precision: float
    converged: bool  # the bracket is within the precision
    percentile: str
    latency_ms: float
    max_error_ratio: float
    min_capacity: float | None
    reason: str
    steps: list[CapacityStep] = field(default_factory=list)
    # What a step must meet, in words, where it is not `percentile` < latency_ms
    # (a streamed search: the plan's TTFT / TPOT / ITL p99 limits).
    criterion: str = ""


@dataclass
class RepeatStat:
    """One metric over the repeats: values, mean, coefficient of variation, 95 % CI (Student t)."""

    values: list[float]
    mean: float
    sd: float
    cv: float | None  # sd / mean (None: mean 0)
    ci_low: float | None  # None: a single repeat
    ci_high: float | None


@dataclass
class RepeatGroup:
    """The repeats of one phase (loadtest.repeats)."""

    phase: str  # the phase's name without its repeat suffix
    kind: str
    repeats: list[str]  # the repeats' phase names
    metrics: dict[str, RepeatStat]  # samples_per_s, rps, p50 ... p99.9


@dataclass
class Comparison:
    """A metric against the baseline: the change and whether it is significant."""

    metric: str
    phase: str
    baseline_mean: float
    mean: float
    change: float  # relative: mean / baseline_mean - 1
    ci_low: float | None  # 95 % CI of the relative change (None: single samples)
    ci_high: float | None
    p_value: float | None  # Welch's t-test (None: single samples)
    significant: bool
    test: str  # "welch" or "single sample"


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
    warmup: WarmupResult | None = None
    # Added within schema 2 with defaults, so summaries written before them still read.
    capacity: Capacity | None = None
    repeats: list[RepeatGroup] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    # What limited the run, by the evidence in order (loadtest.advice): one line.
    diagnosis: str = ""
    events: list[Event] = field(default_factory=list)

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
