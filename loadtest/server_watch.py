"""Reading the server's own view during a run: memory (for the memory, soak and
template scenarios) from our server's JSON /stats, or from any Prometheus
/metrics endpoint (Triton's nv_gpu_memory_used_bytes, a process RSS gauge)."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

# Prometheus series that tell a server's memory, in order of preference.
PROM_MEMORY = {
    "rss_bytes": (
        "modelsoak_process_resident_memory_bytes",
        "process_resident_memory_bytes",
        "nv_cpu_memory_used_bytes",
    ),
    "torch_cuda_max_allocated_bytes": ("modelsoak_torch_cuda_memory_peak_bytes",),
    "torch_cuda_allocated_bytes": ("modelsoak_torch_cuda_memory_allocated_bytes",),
    "gpu_memory_used_bytes": ("nv_gpu_memory_used_bytes", "modelsoak_gpu_memory_used_bytes"),
}
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eE]+|NaN|\+Inf)")


def _get(url: str, timeout: float) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.headers.get("Content-Type", ""), resp.read().decode(errors="replace")


def parse_prometheus(text: str) -> dict[str, float]:
    """Our memory sources from Prometheus text (series summed over labels)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(3))
    out: dict[str, float] = {}
    for source, names in PROM_MEMORY.items():
        for name in names:
            if name in totals:
                out[source] = totals[name]
                break
    return out


class ServerWatch:
    """Polls the server's metrics URL; keeps a memory time series."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.errors = 0
        self.last_error = ""
        self.stats: dict[str, Any] = {}

    def _stats_url(self) -> str:
        return self.url if self.url.endswith(("/metrics", "/stats")) else self.url + "/stats"

    def poll(self) -> dict[str, float] | None:
        try:
            ctype, body = _get(self._stats_url(), self.timeout)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            self.errors += 1
            self.last_error = str(exc)
            return None
        if "json" in ctype or body.lstrip().startswith("{"):
            self.stats = json.loads(body)
            mem = {k: float(v["latest"]) for k, v in self.stats.get("memory", {}).items() if "bytes" in k}
        else:
            mem = parse_prometheus(body)
        self.samples.append((time.time(), mem))
        return mem

    def series(self, source: str) -> tuple[list[float], list[float]]:
        pts = [(t, m[source]) for t, m in self.samples if source in m]
        return [t for t, _ in pts], [v for _, v in pts]

    def peak(self, since: float = 0.0, until: float = float("inf")) -> dict[str, float]:
        out: dict[str, float] = {}
        for t, mem in self.samples:
            if since <= t <= until:
                for k, v in mem.items():
                    out[k] = max(out.get(k, 0.0), v)
        return out

    def memory_source(self) -> str | None:
        """The series the memory SLO reads: CUDA peak allocated on a GPU, else RSS."""
        seen = {k for _, m in self.samples for k in m}
        for source in ("torch_cuda_max_allocated_bytes", "gpu_memory_used_bytes", "rss_bytes"):
            if source in seen:
                return source
        return None
