"""Starting the processes a benchmark compares, and running the load client."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def process_with_port(cmd: list[str], timeout: float = 180.0) -> Iterator[dict[str, Any]]:
    """Run `cmd` (which takes --port-file) until it writes its ports; yield them."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "ports.json"
        log = open(Path(tmp) / "log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [*cmd, "--port-file", str(port_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            end = time.monotonic() + timeout
            while not port_file.exists():
                if proc.poll() is not None or time.monotonic() > end:
                    log.flush()
                    raise RuntimeError(f"{cmd} did not start:\n{(Path(tmp) / 'log').read_text()}")
                time.sleep(0.05)
            yield {**json.loads(port_file.read_text()), "pid": proc.pid}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def our_server(*args: str) -> contextlib.AbstractContextManager[dict[str, Any]]:
    return process_with_port(
        [sys.executable, "-m", "server", "--grpc-port", "0", "--metrics-port", "0", *args]
    )


def echo_server(raw: bool = False, aio: bool = False) -> contextlib.AbstractContextManager[dict[str, Any]]:
    flags = [*(["--raw"] if raw else []), *(["--aio"] if aio else [])]
    return process_with_port([sys.executable, "-m", "bench._echo", *flags])


def load(
    port: int, model: str, shape: str, concurrency: int, duration: float, datatype: str = "FP32"
) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench._client",
            "--address",
            f"127.0.0.1:{port}",
            "--model",
            model,
            "--shape",
            shape,
            "--datatype",
            datatype,
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def interleaved(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each measurement `rounds` times, alternating, so drift hits all alike."""
    out: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            out[name].append(fn())
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


ROOT = Path(__file__).resolve().parent.parent
LOCUST = str(Path(sys.executable).parent / "locust")


def headless_locust(locustfile: Path, grpc_port: int, users: int, duration: float, *extra: str) -> list[str]:
    """A headless Locust command line: `users` users started at once for `duration` s."""
    return [
        LOCUST, "-f", str(locustfile), "--headless", "--host", f"grpc://127.0.0.1:{grpc_port}",
        "-u", str(users), "-r", str(users), "-t", f"{int(duration)}s", "--only-summary", *extra,
    ]  # fmt: skip


def spawn_quiet(cmd: list[str], cwd: str) -> subprocess.Popen[bytes]:
    """Start a process from `cwd` with the repository on its path, its output discarded."""
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
