"""The server-side Prometheus exporter, under the exporters' names.

The collector is part of the server (server/metrics.py): the server serves it on
its own metrics port, and server/ imports nothing from exporters/. This module
keeps the exporter's public names where exporter users look for them.
"""

from __future__ import annotations

from server.leak import LEAK_SOURCES, LeakCache
from server.metrics import ServerCollector, build_registry, stats_document, triton_gpu_text

__all__ = [
    "LEAK_SOURCES",
    "LeakCache",
    "ServerCollector",
    "build_registry",
    "stats_document",
    "triton_gpu_text",
]
