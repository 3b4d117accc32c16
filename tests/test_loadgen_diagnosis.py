"""The diagnosis of a run whose generator is the limit: a Locust process with
many users on a tiny model, starved of CPU (pinned, at the lowest priority, to
a core that busy processes hold; the server has a core of its own). Its event
loop falls behind, whatever its own CPU percent says, and the diagnosis and the
suggestion name the generator, not the server or the network."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from loadtest.results import Summary
from tests.conftest import ServerProcess, locust_cmd
from tests.server_support import wait_until

pytestmark = pytest.mark.slow

HOG = "while True: pass"


@contextmanager
def _hogs(core: int, n: int) -> Iterator[None]:
    """`n` busy processes pinned to `core`."""
    procs = [
        subprocess.Popen([sys.executable, "-c", HOG], preexec_fn=lambda: os.sched_setaffinity(0, {core}))
        for _ in range(n)
    ]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


# Both paths: the calls made in the Locust process (gevent), or in its request engine,
# whose own event-loop lag the self-watch counts beside the Locust process's.
@pytest.mark.parametrize("engine", ["gevent", "process"])
def test_a_cpu_starved_generator_is_diagnosed_and_told_to_add_workers(
    start_server: Callable[..., ServerProcess], tmp_path: Path, engine: str
) -> None:
    cores = sorted(os.sched_getaffinity(0))
    gen_core, server_core = cores[0], cores[-1]
    srv = start_server("--model", "identity")
    psutil.Process(srv.proc.pid).cpu_affinity([server_core])
    cmd = locust_cmd(srv, tmp_path, "-u", "32", "-r", "32", "-t", "6", "--input-shape", "16",
                     "--warmup-requests", "0", "--client-engine", engine)  # fmt: skip
    log = open(tmp_path / "locust.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: os.sched_setaffinity(0, {gen_core}))  # fmt: skip
    try:
        # Started at full speed; once its run has begun, starve it: low priority on a busy core.
        wait_until(lambda: (tmp_path / "run" / "timeseries.jsonl").exists(), bool, 120, "the run's start")
        starved = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]  # its engine too
        for p in starved:
            p.nice(10)
        with _hogs(gen_core, 2):
            # Starved while it runs; its report is written at full speed again.
            wait_until(lambda: (tmp_path / "locust.log").read_text(), lambda t: "shutting down" in t, 120,
                       "the end of the run in the log")  # fmt: skip
        for p in starved:
            with contextlib.suppress(psutil.NoSuchProcess):  # the engine may have ended with its run
                p.nice(0)
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = (tmp_path / "locust.log").read_text()
    s = Summary.read(tmp_path / "run" / "summary.json")
    (worker,) = s.generator.workers.values()
    assert worker.loop_lagged_fraction > s.provenance.plan["validity"]["max_lagged_fraction"], s.generator
    assert s.diagnosis.startswith("load generator "), s.diagnosis
    assert s.verdict == "INVALID" and code == 4, out[-3000:]
    assert any("short of CPU" in r or "CPU-saturated" in r for r in s.generator.invalid_reasons), s.generator
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Add load-generator workers" in report
    assert "The server is the limit" not in report and "Transport takes" not in report
