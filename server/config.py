"""The server's settings: environment (MODELSOAK_SERVER_*), then CLI flags on top."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_device() -> str:
    """cuda when a CUDA device is usable, else cpu (checked without importing torch
    when no NVIDIA driver is present, which keeps start-up fast on CPU hosts)."""
    if not (Path("/proc/driver/nvidia").exists() or os.environ.get("CUDA_VISIBLE_DEVICES")):
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


class ServerSettings(BaseSettings):
    """Settings of `python -m server` / `modelsoak-server`."""

    model_config = SettingsConfigDict(env_prefix="MODELSOAK_SERVER_", extra="forbid")

    model: str = "identity"
    """What to serve: a built-in model name (see --list-models), an .onnx file, a
    TorchScript file, a model repository directory, or a repository config file
    (.yaml/.yml/.json)."""

    backend: Literal["onnx", "torch"] = "onnx"
    """Framework that runs the models: ONNX Runtime or torch (eager / TorchScript)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where models run; auto picks cuda when a CUDA device is present."""

    host: str = "127.0.0.1"
    """Address the gRPC and metrics ports bind to (0.0.0.0 in a container)."""

    grpc_port: int = 8001
    """gRPC port for every protocol (KServe v2, Triton extensions, TorchServe,
    health, reflection); 0 picks a free port."""

    metrics_port: int = 8002
    """HTTP port for /metrics (Prometheus) and /profile; 0 picks a free port, -1
    disables it."""

    max_batch_size: int | None = None
    """Largest batch the dynamic batcher forms (samples); 0 disables batching;
    unset: the model's own default."""

    max_queue_delay_us: int = Field(500, ge=0)
    """How long the batcher waits for a batch to fill, from the oldest request's
    arrival, in microseconds."""

    max_queue_size: int = Field(1024, ge=0)
    """Requests that may wait per model; more are refused with RESOURCE_EXHAUSTED
    at once. 0: unbounded."""

    instances: int = Field(1, ge=1)
    """Model instances per model that execute side by side."""

    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Largest gRPC message received or sent; bigger ones are refused with
    RESOURCE_EXHAUSTED by gRPC."""

    max_concurrent_rpcs: int = Field(0, ge=0)
    """RPCs in progress at once before gRPC refuses more with RESOURCE_EXHAUSTED;
    0: no limit beyond each model's max_queue_size."""

    execution: Literal["auto", "inline", "thread"] = "auto"
    """Where batches run: on the instance's own thread, inline on the server's
    event loop, or auto (inline while executions average under 150 µs on CPU,
    where a thread hand-off would cost more than the model)."""

    params: dict[str, Any] = Field(default_factory=dict)
    """Parameters for the model (built-in parameters such as sleep_ms or
    leak_bytes, and backend options such as threads)."""

    inputs: list[str] = Field(default_factory=list)
    """Input specs NAME:DATATYPE:DIMS for models without shape information
    (TorchScript files), e.g. INPUT0:FP32:-1x3x224x224."""

    outputs: list[str] = Field(default_factory=list)
    """Output specs, as for inputs; inferred from a trial run when absent."""

    probes: bool = True
    """Record the per-request timing breakdown and statistics, and return the
    breakdown in response parameters."""

    memory_interval_s: float = Field(1.0, gt=0)
    """Seconds between samples of process and GPU memory."""

    leak_warmup_s: float = Field(60.0, ge=0)
    """Memory samples of the first seconds after start-up that the in-server
    leak detector ignores (caches and allocators fill up then)."""

    profile_requests: int = Field(0, ge=0)
    """Profile the first N requests after start-up (0: off); a running server is
    profiled with POST /profile?model=NAME&requests=N on the metrics port."""

    profile_dir: Path = Path("profiles")
    """Where profiles (Chrome traces and summaries) are written."""

    model_control_mode: Literal["none", "explicit"] = "none"
    """Triton's convention: none refuses RepositoryModelLoad/Unload
    (FAILED_PRECONDITION); explicit allows them (token-checked with
    admin_token_file)."""

    allow_profiling: bool = False
    """Allow POST/DELETE /profile on the HTTP port (off: 403 and counted in
    modelsoak_admin_refused_total)."""

    admin_token_file: Path | None = None
    """File holding a bearer token that admin actions (profiling, repository
    control) must present: HTTP `Authorization: Bearer TOKEN`, gRPC metadata
    `authorization: Bearer TOKEN`. Read once at start-up."""

    profile_max_requests: int = Field(10_000, ge=1)
    """Largest `requests` one profile may ask for; more is refused with the cap
    in the message."""

    profile_max_s: float = Field(60.0, gt=0)
    """A profile stops after this many seconds, however few requests it saw."""

    profile_max_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024)
    """A profile stops once the server's RSS grew this much since it started
    (the profiler's event buffers live in memory until the trace is written)."""

    grpc_max_concurrent_streams: int = Field(4096, ge=1)
    """HTTP/2 streams (RPCs) one connection may have open at once; a client
    opening more waits on its side for a stream to end. Above the users one
    Locust worker process runs (they share a connection), so a load test is
    never queued on the client without seeing it."""

    grpc_max_connection_idle_s: float = Field(300.0, ge=0)
    """A connection without RPCs for this long is closed with GOAWAY (0: never)."""

    grpc_max_connection_age_s: float = Field(0.0, ge=0)
    """Connections older than this are closed with GOAWAY, so clients
    rebalance over replicas (0: never; a soak test keeps its connections)."""

    grpc_max_connection_age_grace_s: float = Field(30.0, ge=0)
    """After a max-age GOAWAY: seconds the connection's RPCs get to finish."""

    grpc_keepalive_min_ping_s: float = Field(10.0, gt=0)
    """Keepalive enforcement: a client pinging more often than this is sent
    GOAWAY (ENHANCE_YOUR_CALM) after two strikes."""

    grpc_keepalive_permit_without_calls: bool = True
    """Keepalive pings on a connection without RPCs are allowed (at the
    interval above): idle Locust users keep their connections."""

    grpc_max_metadata_bytes: int = Field(16 * 1024, ge=1024)
    """Request metadata (headers) always accepted up to this size; gRPC refuses
    larger with RESOURCE_EXHAUSTED, at random up to 1.25 x and always beyond."""

    grace_s: float = Field(30.0, ge=0)
    """After SIGTERM: seconds in-flight requests get to finish before exit."""

    cache_dir: Path | None = None
    """Where built-in models are exported and cached (default
    ~/.cache/modelsoak/models, or MODELSOAK_CACHE_DIR)."""

    tls_cert: Path | None = None
    """PEM certificate chain: the gRPC and metrics ports serve TLS only.
    Reloaded when the file changes or on SIGHUP."""

    tls_key: Path | None = None
    """PEM private key of --tls-cert."""

    tls_client_ca: Path | None = None
    """PEM CA bundle: clients must present a certificate it signed (mTLS)."""

    log_level: str = "INFO"
    """Python logging level."""

    @model_validator(mode="after")
    def _admin_settings_hold(self) -> ServerSettings:
        if self.profile_requests > self.profile_max_requests:
            raise ValueError(
                f"profile_requests={self.profile_requests} exceeds profile_max_requests="
                f"{self.profile_max_requests}; raise the cap or profile fewer requests"
            )
        path = self.admin_token_file
        if path is not None:
            try:
                token = path.read_text().strip()
            except OSError as exc:
                raise ValueError(f"admin_token_file {path}: cannot be read ({exc.strerror})") from None
            if not token:
                raise ValueError(f"admin_token_file {path} is empty; expected one bearer token")
        return self

    def resolved_device(self) -> str:
        return default_device() if self.device == "auto" else self.device
