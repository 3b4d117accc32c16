"""The typed view of our options that the rest of the load generator reads,
checked as it is made (the options themselves are defined in loadtest.flags)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.flags import SCENARIOS
from loadtest.tls import ClientTls
from loadtest.workload import Lengths

__all__ = ["NOT_REPEATABLE", "SCENARIOS", "Options", "repeat_count"]


def _at_least(get: Any, lows: dict[str, float]) -> None:
    """Numeric options below their least sensible value, named as on the command line."""
    for name, low in lows.items():
        value = get(name)
        if value is not None and float(value) < low:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} {value}: expected at least {low:g}")


# Scenarios whose phases are not one measurement to repeat: a search, a spike, the template's mix.
NOT_REPEATABLE = ("stress", "capacity", "spike", "template")


def repeat_count(value: Any, scenario: str) -> int:
    n = int(value if value is not None else 1)
    if n < 1:
        raise ValueError(f"--repeat {n}: expected a count of at least 1")
    if n > 1 and scenario in NOT_REPEATABLE:
        raise ValueError(
            f"--repeat {n} with --scenario {scenario}: a {scenario} run is not one measurement to repeat; "
            f"expected --scenario one of {', '.join(s for s in SCENARIOS if s not in NOT_REPEATABLE)}"
        )
    return n


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
    warmup_s: float = 0.0
    rebalance: bool = True  # --no-rebalance turns it off (the plan's workers.rebalance too)
    repeat: int = 1  # --repeat: the measured phases, this many times (loadtest.repeats)
    client_engine: str = "auto"  # --client-engine: where the gRPC calls are made (loadtest.engine)
    # Streaming protocols (loadtest.workload): prompt and output lengths, prompts file, OpenAI endpoint.
    input_tokens: str = "128"
    output_tokens: str = "64"
    prompts_file: str = ""
    openai_endpoint: str = "completions"

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
        _at_least(
            get,
            {
                "arrival_rate": 0.0,
                "arrival_ramp_s": 0.0,
                "warmup_requests": 0,
                "warmup_s": 0.0,
                "max_pending": 1,
            },
        )
        if get("request_timeout") is not None and float(get("request_timeout")) <= 0:
            raise ValueError(f"--request-timeout {get('request_timeout')}: expected seconds > 0")
        scenario = get("scenario") or "none"
        Lengths.parse("--input-tokens", get("input_tokens") or "128")  # a bad spec fails here, named
        Lengths.parse("--output-tokens", get("output_tokens") or "64")
        slice_s = float(get("slice_s", 10.0) or 0.0)
        if slice_s <= 0:
            raise ValueError(f"--slice-s {get('slice_s')!r}: expected a positive number of seconds")
        window_s, max_windows = (
            float(get("stable_window_s", 5.0) or 0.0),
            int(get("stable_max_windows", 10) or 0),
        )
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
                get("tls_ca") or "",
                get("tls_client_cert") or "",
                get("tls_client_key") or "",
                get("tls_server_name") or "",
            ),
            slice_s=slice_s,
            stable=bool(get("stable", False)),
            stable_window_s=window_s,
            stable_max_windows=max_windows,
            warmup_s=float(get("warmup_s", 0.0) or 0.0),
            rebalance=not get("no_rebalance", False),
            repeat=repeat_count(get("repeat", 1), scenario),
            client_engine=get("client_engine") or "auto",
            input_tokens=str(get("input_tokens") or "128"),
            output_tokens=str(get("output_tokens") or "64"),
            prompts_file=get("prompts_file") or "",
            openai_endpoint=get("openai_endpoint") or "completions",
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
