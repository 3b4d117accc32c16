"""CPU of a client process and everything it started (Locust and its request engine)."""

from __future__ import annotations

import psutil


def tree_cpu(proc: psutil.Process) -> float:
    """User + system CPU-seconds of `proc` and its live descendants."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total
