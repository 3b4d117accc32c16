"""A port a modelsoak process needs is taken: the process names the port, exits 2
(a setup error) and prints no traceback, whichever port it is (the load
generator's, modelsoak-train's, the local Prometheus stack's; the server's are
in tests/test_server_ports.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LOCUST, ROOT


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another socket listens on, on every interface (SO_REUSEADDR, as servers bind)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


CASES = {
    "metrics": (["--headless", "--metrics-port", "{port}"], "metrics port {port} on 0.0.0.0 is already in use"),
    "web UI": (["--web-host", "127.0.0.1", "--web-port", "{port}"], "web UI port {port} on 127.0.0.1 is already in use"),
    "master": (["--headless", "--master", "--master-bind-port", "{port}"], "master port tcp://*:{port} is already in use"),
}  # fmt: skip


@pytest.mark.faults
@pytest.mark.parametrize("which", list(CASES))
def test_a_taken_port_is_named_and_exits_2_without_a_traceback(taken: int, which: str, tmp_path: Path) -> None:
    args, message = CASES[which]
    cmd = [LOCUST, "-f", str(ROOT / "loadgen"), "--host", "grpc://127.0.0.1:1", "-u", "1", "-t", "5",
           *(a.format(port=taken) for a in args)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 2, out
    assert message.format(port=taken) in out, out
    assert "expected a free port" in out, out
    assert "Traceback" not in out and "Exception ignored" not in out, out


def _refused(cmd: list[str], cwd: Path, message: str) -> None:
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=cwd, check=False)
    out = run.stdout + run.stderr
    assert run.returncode == 2, out
    assert message in out and "expected a free port" in out, out
    assert "Traceback" not in out and "Exception ignored" not in out, out


@pytest.mark.faults
def test_modelsoak_train_metrics_port_taken(taken: int, tmp_path: Path) -> None:
    train = str(Path(sys.executable).parent / "modelsoak-train")
    cmd = [train, "bench", "--model", "digits-cnn", "--epochs", "1", "--metrics-addr", "127.0.0.1",
           "--metrics-port", str(taken), "--out", str(tmp_path / "out")]  # fmt: skip
    _refused(cmd, tmp_path, f"metrics port {taken} on 127.0.0.1 is already in use")


@pytest.mark.faults
@pytest.mark.parametrize("what", ["Prometheus", "Pushgateway"])
def test_the_local_stack_port_taken(taken: int, tmp_path: Path, what: str) -> None:
    cmd = [sys.executable, "-m", "exporters.stack", f"--{what.lower()}-port", str(taken), "--dir", str(tmp_path)]
    _refused(cmd, ROOT, f"{what} port {taken} on 127.0.0.1 is already in use")
