"""Helpers of the load-generator tests: waiting on a condition (a file, a log
line, a metric) instead of sleeping a fixed time."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from server.netutil import free_port

__all__ = ["free_port", "wait_until"]


def wait_until(
    ready: Callable[[], bool],
    timeout_s: float,
    what: str,
    log: Callable[[], str] = lambda: "",
    proc: subprocess.Popen[str] | None = None,
) -> None:
    """Return as soon as `ready()` holds; fail naming `what` (with the log's
    tail) when `timeout_s` passes first or `proc` exits."""
    end = time.monotonic() + timeout_s
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}:\n{log()[-3000:]}")
        if time.monotonic() > end:
            raise AssertionError(f"no {what} within {timeout_s:g} s:\n{log()[-3000:]}")
        time.sleep(0.1)  # the poll interval while the condition is checked again
