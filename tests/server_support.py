"""Helpers of the server tests: wait on what the server reports (a statistic, a
job's state) instead of sleeping a fixed time."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(
    read: Callable[[], T], ready: Callable[[T], bool], timeout_s: float, what: str, every_s: float = 0.02
) -> T:
    """Read until `ready(value)` holds and return that value; fail naming `what`
    and the last value read when `timeout_s` passes first."""
    end = time.monotonic() + timeout_s
    while True:
        value = read()
        if ready(value):
            return value
        if time.monotonic() > end:
            raise AssertionError(f"no {what} within {timeout_s:g} s; last read: {value!r}")
        time.sleep(every_s)  # the interval between two reads of the condition, not a wait for it


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def model_stats(metrics_url: str, model: str) -> dict[str, Any]:
    """The model's entry of the server's /stats document (queue depth, in flight, outcomes)."""
    return dict(get_json(metrics_url + "/stats")["models"][model])


def eventually(check: Callable[[], T], what: str, timeout_s: float) -> T:
    """`check()`'s first truthy value (a Prometheus query's data, a firing alert),
    read every half second: a query is not free, and scrapes come every second."""
    return wait_until(check, bool, timeout_s, what, every_s=0.5)


def streaming_repository(folder: Path) -> Path:
    """A repository config serving the streaming built-ins (small and quick) and a
    tensor model beside them; `tiny-lm-1` has one sequence slot and one waiting place,
    `tiny-lm-kv` four slots but a KV budget of one context window (512 tokens)."""
    path = folder / "streaming.yaml"
    path.write_text(
        "models:\n"
        "  - {name: tiny-lm, source: tiny-lm, params: {max_sequences: 4, threads: 1}}\n"
        "  - {name: tiny-lm-1, source: tiny-lm, params: {max_sequences: 1, max_waiting: 1, threads: 1}}\n"
        "  - {name: tiny-lm-kv, source: tiny-lm, params: {max_sequences: 4, max_kv_tokens: 512, threads: 1}}\n"
        "  - {name: stream-sleep, source: stream-sleep, params: {ttft_ms: 5, itl_ms: 2, max_tokens: 8}}\n"
        "  - {name: identity, source: identity}\n"
    )
    return path
