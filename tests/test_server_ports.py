"""A port that is taken: the second server says which and exits 2, and never shares it."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from server.app import InferenceServer
from server.config import ServerSettings
from server.core import ServerCore
from server.http import start_http
from server.netutil import PortInUse, free_port, port_in_use
from tests.conftest import ServerProcess, infer_request


@pytest.fixture
def listener() -> Iterator[int]:
    """A port another socket listens on (as gRPC's and http.server's do, SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_port_in_use_sees_a_listener_and_only_a_listener(listener: int) -> None:
    assert port_in_use("127.0.0.1", listener)
    assert not port_in_use("127.0.0.1", free_port())
    assert not port_in_use("127.0.0.1", 0)


def test_grpc_bind_on_a_taken_port_is_refused_by_name(listener: int) -> None:
    """The path after the early check: grpcio's own bind failure becomes PortInUse."""
    settings = ServerSettings.model_validate({"grpc_port": listener, "metrics_port": -1})

    async def bind() -> None:
        server = InferenceServer(settings)
        grpc_server = server._grpc_server()
        try:
            server._bind(grpc_server)
        finally:
            await grpc_server.stop(0)

    with pytest.raises(PortInUse, match=rf"gRPC port {listener} on 127.0.0.1 is already in use"):
        asyncio.run(bind())


def test_metrics_bind_on_a_taken_port_is_refused_by_name(listener: int) -> None:
    core = ServerCore(ServerSettings.model_validate({"metrics_port": listener}))
    with pytest.raises(PortInUse, match=rf"metrics port {listener} on 127.0.0.1 is already in use"):
        start_http(core, "127.0.0.1", listener)


def _second_server(cache: Path, grpc_port: int, metrics_port: int) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "server", "--model", "identity", "--cache-dir", str(cache),
           "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.faults
@pytest.mark.parametrize("which", ["grpc", "metrics"])
def test_second_server_on_a_busy_port_exits_2_and_says_why(
    start_server: Callable[..., ServerProcess], model_cache: Path, which: str
) -> None:
    first = start_server("--model", "identity")
    busy = first.grpc_port if which == "grpc" else first.metrics_port
    run = _second_server(model_cache, busy if which == "grpc" else 0, busy if which == "metrics" else 0)
    assert run.returncode == 2, run.stderr
    assert f"port {busy} on 127.0.0.1 is already in use" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    # The first server still has its port to itself and serves.
    x = np.ones((1, 4), np.float32)
    resp = first.stub().ModelInfer(infer_request("identity", {"INPUT0": x}), timeout=10)
    assert np.frombuffer(resp.raw_output_contents[0], np.float32).tolist() == x.ravel().tolist()


@pytest.mark.faults
@pytest.mark.parametrize("which", ["gRPC", "metrics"])
def test_modelsoak_server_on_a_port_another_program_holds_exits_2_naming_it(
    listener: int, model_cache: Path, which: str
) -> None:
    """Not another modelsoak server: any listener (here a bare socket) on the port."""
    grpc_port, metrics_port = (listener, 0) if which == "gRPC" else (0, listener)
    cmd = [str(Path(sys.executable).parent / "modelsoak-server"), "--model", "identity",
           "--cache-dir", str(model_cache), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2, run.stderr
    assert f"{which} port {listener} on 127.0.0.1 is already in use" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr, run.stderr
