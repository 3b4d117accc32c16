"""The load generator's options, each defined once.

One `Flag` gives the command-line flag (added to Locust's parser, so it also
reads its LOCUST_<NAME> variable and locust.conf), the --help text (grouped),
the web UI field (label, help and group; or why the option is not there), the
test-plan key it stands for where there is one, and the row of the options
reference in the documentation. `loadtest.options.Options` is the typed view
of the parsed values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    "capacity",
)

# The protocols whose requests stream tokens back (loadtest.streaming).
STREAMING = ("openai", "kserve-stream")


def uses_engine(client_engine: str) -> bool:
    """Whether a process's calls go to its request engine (loadtest.engine): --client-engine
    process, or auto (the default). There closed-loop unary calls cost 1.6x less client CPU
    (bench/client_cost.py), the open-loop schedule runs beside the calls on the engine's own
    loop (loadtest.engine_schedule), and each streamed token is timed on a loop with nothing
    else to do (through gevent it waits for the Locust process: bench/streams.py). The engine
    sends its event-loop lag to the run's self-watch, so an engine short of CPU makes the run
    INVALID as a generator short of CPU. gevent keeps every call in the Locust process."""
    return client_engine in ("auto", "native", "process")


# The order of the groups in --help, the web UI and the reference.
GROUPS = (
    "Target",
    "Streaming (token) workloads",
    "Scenario and plan",
    "Open loop",
    "Measurement",
    "Results and metrics",
    "Distributed runs",
    "TLS (grpcs://)",
)


@dataclass(frozen=True)
class Flag:
    """One option. `web_ui` is empty when the option is a web UI field; otherwise
    it says why the option is set per process and not per run."""

    flag: str
    group: str
    label: str
    help: str
    default: Any
    type: type | None = None
    choices: tuple[str, ...] | None = None
    web_ui: str = ""
    plan_key: str = ""

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def env_var(self) -> str:
        return "LOCUST_" + self.dest.upper()

    @property
    def in_web_ui(self) -> bool:
        return not self.web_ui

    @property
    def is_switch(self) -> bool:
        return isinstance(self.default, bool)

    def ui_help(self) -> str:
        """The web UI's text for the field: Locust labels a field from its name, so
        the group and the human label lead the help it shows beside it."""
        return f"{self.group} › {self.label}: {self.help}"


_PER_PROCESS = "each process reads it once when it starts, so it is a command-line or environment setting"

FLAGS: tuple[Flag, ...] = (
    # -- Target
    Flag("--protocol", "Target", "Protocol",
         "gRPC API of the target: KServe v2 / Open Inference Protocol (our server, Triton, KServe, MLServer) "
         "or TorchServe's inference API; token streaming: openai (an OpenAI-compatible HTTP API: ours, vLLM, "
         "TGI, llama.cpp, Ollama; --host http://HOST:PORT) or kserve-stream (KServe v2 ModelStreamInfer to a "
         "decoupled model, as Triton streams)", "kserve",
         choices=("kserve", "torchserve", "openai", "kserve-stream")),
    Flag("--model", "Target", "Model", "model to load-test; empty: the only model the server lists", ""),
    Flag("--model-version", "Target", "Model version", "model version; empty: the server's choice", ""),
    Flag("--batch-size", "Target", "Batch size", "samples per request", 1, int),
    Flag("--input-shape", "Target", "Input shape",
         "dims of one sample (without the batch dim), e.g. 3x224x224; default: from ModelMetadata (needed "
         "for variable dims, and for TorchServe, which has no metadata API)", ""),
    Flag("--datatype", "Target", "Input datatype", "input datatype; default: from ModelMetadata", ""),
    Flag("--payload-file", "Target", "TorchServe payload file",
         "torchserve: send this file's bytes as the request's 'data' (for a handler with its own format)", ""),
    Flag("--request-timeout", "Target", "Request deadline (s)", "deadline of every call, seconds", 30.0, float),
    Flag("--client-engine", "Target", "Client engine",
         "where the calls are made: process (a child process per load-generator process, the request "
         "engine, makes the calls with grpc.aio, runs the open-loop schedule and reads streamed tokens on "
         "its own event loop; the users are its in-flight slots), native (the same engine, its unary calls "
         "to plaintext targets made in C over libnghttp2: loadtest.native_client), or gevent (each user's "
         "own call, in the Locust process); auto: native where it builds (gcc, libnghttp2-dev), else process",
         "auto", choices=("auto", "native", "process", "gevent"), web_ui=_PER_PROCESS),
    Flag("--server-metrics-url", "Target", "Server metrics URL",
         "the server's metrics: our server's http://HOST:8002 (JSON /stats), or a Prometheus /metrics URL", ""),
    # -- Streaming
    Flag("--input-tokens", "Streaming (token) workloads", "Prompt length (tokens)",
         "openai / kserve-stream: prompt length, N or uniform:LOW:HIGH or normal:MEAN:SD (N words, about N "
         "tokens: the server's usage says exactly)", "128"),
    Flag("--output-tokens", "Streaming (token) workloads", "Output length (tokens)",
         "openai / kserve-stream: max_tokens of each request, N or uniform:LOW:HIGH or normal:MEAN:SD", "64"),
    Flag("--prompts-file", "Streaming (token) workloads", "Prompts file (JSONL)",
         'openai / kserve-stream: prompts to send in turn, one {"prompt": ...} or {"messages": [...]} per '
         "line (optional max_tokens each), instead of generated ones", ""),
    Flag("--openai-endpoint", "Streaming (token) workloads", "OpenAI endpoint",
         "openai: /v1/completions or /v1/chat/completions", "completions", choices=("completions", "chat")),
    # -- Scenario and plan
    Flag("--scenario", "Scenario and plan", "Scenario",
         "load pattern and checks; none: plain Locust -u/-r/-t", "none", choices=SCENARIOS),
    Flag("--slo-file", "Scenario and plan", "Test plan (YAML)",
         "YAML test plan: SLO thresholds and scenario parameters (defaults: the performance-test template)", ""),
    Flag("--baseline", "Scenario and plan", "Baseline summary.json",
         "summary.json of an earlier run to compare p99 latency and throughput with", ""),
    Flag("--repeat", "Scenario and plan", "Repeats",
         "measure the scenario's phases this many times in one run (a plain run splits -t into as many); "
         "the report gives each metric's mean, CV and 95 % CI, and --baseline with repeats on both sides "
         "judges a regression by Welch's t-test", 1, int),
    Flag("--phase-timeout-s", "Scenario and plan", "Phase timeout (s)",
         "a phase that counts requests (concurrency) ends after this many seconds even when its users "
         "have not sent them all, and says so in the log (0: wait for ever)", 600.0, float),
    Flag("--seed", "Scenario and plan", "Seed", "seed for input data and Poisson arrivals", 0, int),
    # -- Open loop
    Flag("--arrival-rate", "Open loop", "Arrival rate (requests/s)",
         "open loop: requests/s scheduled across all workers (0: closed loop, users send back to back); "
         "a capacity search starts its ramp here instead of at capacity.start_rate", 0.0, float,
         plan_key="capacity.start_rate"),
    Flag("--arrival", "Open loop", "Arrival process", "open loop: spacing of scheduled sends",
         "constant", choices=("constant", "poisson")),
    Flag("--arrival-ramp-s", "Open loop", "Rate ramp-up (s)",
         "open loop: ramp the rate up from zero over the run's first seconds (steps: the stress plan's rates)",
         0.0, float),
    Flag("--max-pending", "Open loop", "Most pending sends",
         "open loop: scheduled sends that may wait for a free user before new ones are dropped", 1000, int),
    # -- Measurement
    Flag("--warmup-requests", "Measurement", "Warm-up requests",
         "first requests of the run (across all workers, each its share) left out of the statistics", 10, int),
    Flag("--warmup-s", "Measurement", "Warm-up time (s)",
         "requests sent in the first seconds of the run's load left out of the statistics (with "
         "--warmup-requests: a request is warm-up when either says so)", 0.0, float),
    Flag("--slice-s", "Measurement", "Time slice (s)",
         "seconds per time slice: the summary and report carry each slice's throughput and percentiles",
         10.0, float),
    Flag("--stable", "Measurement", "Measure until stable",
         "measure each phase in windows until the last three agree within 10 % on throughput and p99", False),
    Flag("--stable-window-s", "Measurement", "Stability window (s)", "--stable: seconds per window", 5.0, float),
    Flag("--stable-max-windows", "Measurement", "Most stability windows",
         "--stable: windows before a phase that has not settled ends (the run is then INVALID)", 10, int),
    Flag("--series-interval", "Measurement", "Time-series interval (s)",
         "seconds between points of timeseries.jsonl (and server memory samples)", 2.0, float),
    Flag("--latency-log", "Measurement", "Raw latency folder",
         "also write every measured latency (ns, int64) of each process to DIR/latencies-PID.npy, "
         "to check the reported percentiles against the raw data", ""),
    # -- Results and metrics
    Flag("--results-dir", "Results and metrics", "Results folder", "where each run's results folder goes",
         "results"),
    Flag("--run-id", "Results and metrics", "Run name",
         "name of this run's results folder (default: time-based)", ""),
    Flag("--pushgateway", "Results and metrics", "Pushgateway URL",
         "push the final summary to this Pushgateway URL", ""),
    Flag("--metrics-port", "Results and metrics", "Metrics port",
         "headless runs: serve the master's Prometheus metrics on this port (-1: off; the web UI has /metrics)",
         -1, int, web_ui="the port is bound when the process starts; the web UI serves /metrics itself"),
    Flag("--termination-log", "Results and metrics", "Termination log",
         "write why this process failed (a worker that lost its master, a run's verdict) to this file; "
         "Kubernetes: /dev/termination-log, the pod's termination message", "", web_ui=_PER_PROCESS),
    # -- Distributed runs
    Flag("--no-rebalance", "Distributed runs", "Do not rebalance",
         "a lost worker's users (open loop: its share of the rate) are not moved to the other workers "
         "(default: moved)", False),
    Flag("--master-timeout-s", "Distributed runs", "Master timeout (s)",
         "a worker that hears no heartbeat from its master for this many seconds stops sending, "
         "writes what it measured to --results-dir as lost-master-WORKER.json and exits 4 (Locust alone "
         "waits 60 s and exits 0)",
         5.0, float, web_ui="a worker's own setting: the web UI runs on the master"),
    # -- TLS. Locust's own --tls-cert/--tls-key serve its web UI over HTTPS (and
    # here the headless --metrics-port too), so the client certificate has flags of its own.
    Flag("--tls-ca", "TLS (grpcs://)", "CA bundle",
         "grpcs: PEM CA bundle the server's certificate must chain to (default: the system's roots)", "",
         web_ui=_PER_PROCESS),
    Flag("--tls-client-cert", "TLS (grpcs://)", "Client certificate", "grpcs: PEM client certificate (mTLS)",
         "", web_ui=_PER_PROCESS),
    Flag("--tls-client-key", "TLS (grpcs://)", "Client key", "grpcs: PEM key of --tls-client-cert", "",
         web_ui=_PER_PROCESS),
    Flag("--tls-server-name", "TLS (grpcs://)", "Server name",
         "grpcs: the name the server's certificate is for, when not the host dialled", "", web_ui=_PER_PROCESS),
)  # fmt: skip

BY_DEST = {f.dest: f for f in FLAGS}


def add_arguments(parser: Any) -> None:
    """Register every option on Locust's parser (events.init_command_line_parser),
    one argument group per GROUPS entry."""
    for group in GROUPS:
        container = parser.add_argument_group(f"modelsoak: {group}")
        for f in (f for f in FLAGS if f.group == group):
            kwargs: dict[str, Any] = {"default": f.default, "env_var": f.env_var, "dest": f.dest,
                                      "help": f.help.replace("%", "%%")}  # fmt: skip
            if f.is_switch:
                kwargs["action"] = "store_true"
            else:
                kwargs["type"] = f.type or str
                if f.choices:
                    kwargs["choices"] = list(f.choices)
            action = container.add_argument(f.flag, **kwargs)
            # Locust's parser takes these as add_argument keywords; its argument groups
            # are plain argparse ones, so they are set on the action as Locust does.
            action.include_in_web_ui = f.in_web_ui
            action.is_secret = action.is_required = action.is_multiple = False


def web_ui_fields(extra_options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Locust's web UI fields (its template's extra_options), ours each with its
    group and label in front of its help: Locust's page lists the fields sorted
    by name and labels each from its name, so the text is what groups them."""
    ours = {
        f.dest: {**extra_options[f.dest], "help_text": f.ui_help()} for f in FLAGS if f.dest in extra_options
    }
    others = {k: v for k, v in extra_options.items() if k not in BY_DEST}
    return {**ours, **others}
