"""Our command-line options, added to Locust's parser (so they also read
LOCUST_<NAME> variables and locust.conf, and show in the web UI), and the typed
view the rest of the load generator reads."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.tls import ClientTls

SCENARIOS = (
    "none",
    "latency",
    "throughput",
    "batch",
    "memory",
    "concurrency",
    "soak",
    "stress",
    "spike",
    "template",
)


def add_arguments(parser: Any) -> None:
    """Register our options on Locust's parser (events.init_command_line_parser)."""

    # Straight on the parser: Locust's argument groups do not take include_in_web_ui.
    def a(flag: str, **kwargs: Any) -> None:
        # Locust's own options each name their LOCUST_* variable; ours do the same.
        kwargs.setdefault("env_var", "LOCUST_" + flag.lstrip("-").replace("-", "_").upper())
        parser.add_argument(flag, **kwargs)

    a(
        "--protocol",
        choices=["kserve", "torchserve"],
        default="kserve",
        include_in_web_ui=True,
        help="gRPC API of the target: KServe v2 / Open Inference Protocol (our server, Triton, KServe, "
        "MLServer) or TorchServe's inference API",
    )
    a(
        "--model",
        default="",
        include_in_web_ui=True,
        help="model to load-test; empty: the only model the server lists",
    )
    a("--model-version", default="", include_in_web_ui=True, help="model version; empty: the server's choice")
    a("--batch-size", type=int, default=1, include_in_web_ui=True, help="samples per request")
    a(
        "--input-shape",
        default="",
        include_in_web_ui=True,
        help="dims of one sample (without the batch dim), e.g. 3x224x224; default: from ModelMetadata",
    )
    a("--datatype", default="", include_in_web_ui=True, help="input datatype; default: from ModelMetadata")
    a(
        "--scenario",
        choices=SCENARIOS,
        default="none",
        include_in_web_ui=True,
        help="load pattern and checks; none: plain Locust -u/-r/-t",
    )
    a(
        "--slo-file",
        default="",
        include_in_web_ui=True,
        help="YAML test plan: SLO thresholds and scenario parameters (defaults: the performance-test template)",
    )
    a(
        "--baseline",
        default="",
        include_in_web_ui=True,
        help="summary.json of an earlier run to compare p99 latency and throughput with",
    )
    a("--results-dir", default="results", include_in_web_ui=True, help="where each run's results folder goes")
    a(
        "--run-id",
        default="",
        include_in_web_ui=True,
        help="name of this run's results folder (default: time-based)",
    )
    a(
        "--request-timeout",
        type=float,
        default=30.0,
        include_in_web_ui=True,
        help="deadline of every call, seconds",
    )
    a(
        "--warmup-requests",
        type=int,
        default=10,
        include_in_web_ui=True,
        help="first requests of each user left out of the statistics",
    )
    a(
        "--arrival-rate",
        type=float,
        default=0.0,
        include_in_web_ui=True,
        help="open loop: requests/s scheduled across all workers (0: closed loop, users send back to back)",
    )
    a(
        "--arrival",
        choices=["constant", "poisson"],
        default="constant",
        include_in_web_ui=True,
        help="open loop: spacing of scheduled sends",
    )
    a(
        "--arrival-ramp-s",
        type=float,
        default=0.0,
        include_in_web_ui=True,
        help="open loop: ramp the rate up from zero over the run's first seconds (steps: the stress plan's rates)",
    )
    a(
        "--max-pending",
        type=int,
        default=1000,
        include_in_web_ui=True,
        help="open loop: scheduled sends that may wait for a free user before new ones are dropped",
    )
    a(
        "--server-metrics-url",
        default="",
        include_in_web_ui=True,
        help="the server's metrics: our server's http://HOST:8002 (JSON /stats), or a Prometheus /metrics URL",
    )
    a(
        "--metrics-port",
        type=int,
        default=-1,
        include_in_web_ui=False,
        help="headless runs: serve the master's Prometheus metrics on this port (-1: off; the web UI has /metrics)",
    )
    a(
        "--pushgateway",
        default="",
        include_in_web_ui=True,
        help="push the final summary to this Pushgateway URL",
    )
    a("--seed", type=int, default=0, include_in_web_ui=True, help="seed for input data and Poisson arrivals")
    a(
        "--series-interval",
        type=float,
        default=2.0,
        include_in_web_ui=False,
        help="seconds between points of timeseries.jsonl (and server memory samples)",
    )
    a(
        "--slice-s",
        type=float,
        default=10.0,
        include_in_web_ui=False,
        help="seconds per time slice: the summary and report carry each slice's throughput and percentiles",
    )
    a("--stable", action="store_true", default=False, include_in_web_ui=False,
      help="measure each phase in windows until the last three agree within 10 %% on throughput and p99")
    a("--stable-window-s", type=float, default=5.0, include_in_web_ui=False, help="--stable: seconds per window")
    a("--stable-max-windows", type=int, default=10, include_in_web_ui=False,
      help="--stable: windows before a phase that has not settled ends (the run is then INVALID)")  # fmt: skip
    a(
        "--latency-log",
        default="",
        include_in_web_ui=False,
        help="also write every measured latency (ns, int64) of each process to DIR/latencies-PID.npy, "
        "to check the reported percentiles against the raw data",
    )
    a(
        "--phase-timeout-s",
        type=float,
        default=600.0,
        include_in_web_ui=True,
        help="a phase that counts requests (concurrency) ends after this many seconds even when its users "
        "have not sent them all, and says so in the log (0: wait for ever)",
    )
    a(
        "--master-timeout-s",
        type=float,
        default=5.0,
        help="a worker that hears no heartbeat from its master for this many seconds stops sending, "
        "writes what it measured to --results-dir and exits 4 (Locust alone waits 60 s and exits 0)",
    )
    a(
        "--payload-file",
        default="",
        include_in_web_ui=True,
        help="torchserve: send this file's bytes as the request's 'data' (for a handler with its own format)",
    )
    _add_tls_arguments(a)


def _add_tls_arguments(a: Any) -> None:
    """--host grpcs://... for both protocols. Locust's own --tls-cert/--tls-key
    serve its web UI over HTTPS, and here the headless --metrics-port too, so
    the client certificate has flags of its own."""
    a("--tls-ca", default="", include_in_web_ui=False, help="grpcs: PEM CA bundle the server's "
      "certificate must chain to (default: the system's roots)")  # fmt: skip
    a("--tls-client-cert", default="", include_in_web_ui=False, help="grpcs: PEM client certificate (mTLS)")
    a("--tls-client-key", default="", include_in_web_ui=False, help="grpcs: PEM key of --tls-client-cert")
    a("--tls-server-name", default="", include_in_web_ui=False,
      help="grpcs: the name the server's certificate is for, when not the host dialled")  # fmt: skip


def _at_least(get: Any, lows: dict[str, float]) -> None:
    """Numeric options below their least sensible value, named as on the command line."""
    for name, low in lows.items():
        value = get(name)
        if value is not None and float(value) < low:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} {value}: expected at least {low:g}")


@dataclass(frozen=True)
class Options:
    host: str
    protocol: str
    model: str
    model_version: str
    batch_size: int
    input_shape: tuple[int, ...] | None
    datatype: str
    scenario: str
    slo_file: Path | None
    baseline: Path | None
    results_dir: Path
    run_id: str
    request_timeout: float
    warmup_requests: int
    arrival_rate: float
    arrival: str
    arrival_ramp_s: float
    max_pending: int
    server_metrics_url: str
    metrics_port: int
    pushgateway: str
    seed: int
    latency_log: Path | None
    series_interval: float
    phase_timeout_s: float
    headless: bool
    num_users: int | None
    spawn_rate: float | None
    run_time: int | None
    tls: ClientTls = field(default_factory=ClientTls)
    slice_s: float = 10.0
    stable: bool = False
    stable_window_s: float = 5.0
    stable_max_windows: int = 10

    @classmethod
    def from_parsed(cls, parsed: Any, host: str | None) -> Options:
        def get(name: str, default: Any = None) -> Any:
            return getattr(parsed, name, default) if parsed is not None else default

        shape = get("input_shape") or ""
        try:
            dims = tuple(int(d) for d in shape.lower().split("x")) if shape else None
        except ValueError:
            raise ValueError(
                f"--input-shape {shape!r}: expected dims joined by 'x', e.g. 3x224x224"
            ) from None
        if dims is not None and min(dims) < 1:
            raise ValueError(f"--input-shape {shape!r}: every dim must be at least 1, e.g. 3x224x224")
        batch = int(get("batch_size", 1) or 1)
        if batch < 1:
            raise ValueError(f"--batch-size {batch}: must be at least 1")
        _at_least(get, {"arrival_rate": 0.0, "arrival_ramp_s": 0.0, "warmup_requests": 0, "max_pending": 1})
        if get("request_timeout") is not None and float(get("request_timeout")) <= 0:
            raise ValueError(f"--request-timeout {get('request_timeout')}: expected seconds > 0")
        scenario = get("scenario") or "none"
        slice_s = float(get("slice_s", 10.0) or 0.0)
        if slice_s <= 0:
            raise ValueError(f"--slice-s {get('slice_s')!r}: expected a positive number of seconds")
        window_s, max_windows = float(get("stable_window_s", 5.0) or 0.0), int(get("stable_max_windows", 10) or 0)
        if window_s <= 0 or max_windows < 3:
            raise ValueError(
                f"--stable-window-s {window_s:g} / --stable-max-windows {max_windows}: "
                "expected a positive window and at least 3 windows"
            )
        return cls(
            host=host or get("host") or "",
            protocol=get("protocol") or "kserve",
            model=get("model") or "",
            model_version=get("model_version") or "",
            batch_size=batch,
            input_shape=dims,
            datatype=(get("datatype") or "").upper(),
            scenario=scenario,
            slo_file=Path(get("slo_file")) if get("slo_file") else None,
            baseline=Path(get("baseline")) if get("baseline") else None,
            results_dir=Path(get("results_dir") or "results"),
            run_id=get("run_id") or "",
            request_timeout=float(get("request_timeout", 30.0) or 30.0),
            warmup_requests=int(get("warmup_requests", 10) or 0),
            arrival_rate=float(get("arrival_rate", 0.0) or 0.0),
            arrival=get("arrival") or "constant",
            arrival_ramp_s=float(get("arrival_ramp_s", 0.0) or 0.0),
            max_pending=int(get("max_pending", 1000) or 1000),
            server_metrics_url=(get("server_metrics_url") or "").rstrip("/"),
            metrics_port=int(get("metrics_port", -1) if get("metrics_port") is not None else -1),
            pushgateway=(get("pushgateway") or "").rstrip("/"),
            seed=int(get("seed", 0) or 0),
            latency_log=Path(get("latency_log")) if get("latency_log") else None,
            series_interval=max(0.2, float(get("series_interval", 2.0) or 2.0)),
            phase_timeout_s=max(0.0, float(get("phase_timeout_s", 600.0) or 0.0)),
            headless=bool(get("headless", False)),
            num_users=get("num_users"),
            spawn_rate=get("spawn_rate"),
            run_time=get("run_time"),
            tls=ClientTls(
                get("tls_ca") or "", get("tls_client_cert") or "", get("tls_client_key") or "", get("tls_server_name") or ""
            ),
            slice_s=slice_s,
            stable=bool(get("stable", False)),
            stable_window_s=window_s,
            stable_max_windows=max_windows,
        )

    def as_record(self) -> dict[str, str | int | float | bool | None]:
        """The options as the summary records them (paths and shapes as text)."""
        out: dict[str, str | int | float | bool | None] = {}
        for k, v in vars(self).items():
            out[k] = v if v is None or isinstance(v, int | float | str | bool) else str(v)
        return out

    def new_run_id(self) -> str:
        if self.run_id:
            return self.run_id
        parts = [time.strftime("%Y%m%d-%H%M%S"), self.scenario, self.model]
        return "-".join(p for p in parts if p)
