"""Shared fixtures: real server processes on 127.0.0.1, ports read back from a port file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from server.proto import grpc_service_pb2 as pb
from server.proto import grpc_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One built-in model cache for the whole session (exports happen once)."""
    shared = os.environ.get("MODELSOAK_TEST_CACHE")
    path = Path(shared) if shared else tmp_path_factory.mktemp("model-cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


class ServerProcess:
    """A `python -m server` subprocess; stopped with SIGTERM at teardown."""

    def __init__(self, args: list[str], workdir: Path, cache: Path, env: dict[str, str] | None = None):
        self.port_file = workdir / f"ports-{time.monotonic_ns()}.json"
        self.log_path = workdir / f"server-{time.monotonic_ns()}.log"
        cmd = [sys.executable, "-m", "server", "--grpc-port", "0", "--metrics-port", "0",
               "--port-file", str(self.port_file), "--cache-dir", str(cache), *args]  # fmt: skip
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT, env=full_env
        )
        self.grpc_port = 0
        self.metrics_port = 0

    def wait_ready(self, timeout: float = 120.0) -> ServerProcess:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.port_file.exists():
                ports = json.loads(self.port_file.read_text())
                self.grpc_port, self.metrics_port = ports["grpc"], ports["metrics"]
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.proc.kill()
        raise TimeoutError(f"server did not start within {timeout} s:\n{self.log()}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stub(self) -> pb_grpc.GRPCInferenceServiceStub:
        return pb_grpc.GRPCInferenceServiceStub(self.channel())

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def _starter(workdir: Path, cache: Path) -> tuple[Callable[..., ServerProcess], list[ServerProcess]]:
    started: list[ServerProcess] = []

    def _start(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> ServerProcess:
        proc = ServerProcess(list(args), workdir, cache, env)
        started.append(proc)
        return proc.wait_ready() if wait else proc

    return _start, started


@pytest.fixture
def start_server(tmp_path: Path, model_cache: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: start_server("--model", "identity", ...) -> a ready ServerProcess."""
    start, started = _starter(tmp_path, model_cache)
    yield start
    for proc in started:
        proc.terminate()


@pytest.fixture(scope="module")
def start_module_server(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> Iterator[Callable[..., ServerProcess]]:
    """As start_server, for servers shared by a test module."""
    start, started = _starter(tmp_path_factory.mktemp("server"), model_cache)
    yield start
    for proc in started:
        proc.terminate()


def infer_request(model: str, arrays: dict[str, object], raw: bool = True) -> pb.ModelInferRequest:
    """A ModelInferRequest from numpy arrays (raw contents, or typed when raw=False)."""
    import numpy as np

    from server import dtypes, tensors

    req = pb.ModelInferRequest(model_name=model)
    for name, value in arrays.items():
        arr = np.asarray(value)
        dt = dtypes.from_numpy(arr.dtype)
        t = req.inputs.add(name=name, datatype=dt.name, shape=list(arr.shape))
        if raw:
            data = tensors.encode_bytes_elements(arr) if dt.name == "BYTES" else arr.tobytes()
            req.raw_input_contents.append(data)
        else:
            getattr(t.contents, str(dt.contents_field)).extend(arr.reshape(-1).tolist())
    return req


def output_array(resp: pb.ModelInferResponse, index: int = 0) -> object:
    """The index-th output of a response as a numpy array."""
    import numpy as np

    from server import dtypes, tensors

    out = resp.outputs[index]
    dt = dtypes.lookup(out.datatype)
    shape = list(out.shape)
    if resp.raw_output_contents:
        raw = resp.raw_output_contents[index]
        if dt.name == "BYTES":
            return tensors.decode_bytes_elements(raw, int(np.prod(shape)), out.name).reshape(shape)
        return np.frombuffer(raw, dtype=dt.numpy).reshape(shape)
    values = getattr(out.contents, str(dt.contents_field))
    return np.asarray(list(values), dtype=dt.numpy).reshape(shape)


LOCUST = str(Path(sys.executable).parent / "locust")


class LocustRun:
    """A finished `locust -f loadgen/` subprocess and its results folder."""

    def __init__(self, proc: subprocess.CompletedProcess[str], results: Path) -> None:
        self.returncode = proc.returncode
        self.output = proc.stdout + proc.stderr
        self.results = results

    def summary(self) -> dict:
        path = self.results / "summary.json"
        assert path.exists(), f"no summary.json in {self.results}:\n{self.output[-3000:]}"
        return json.loads(path.read_text())


def locust_cmd(
    server: ServerProcess | None, results_dir: Path, *args: str, host: str | None = None
) -> list[str]:
    target = host or (f"grpc://{server.address}" if server else "")
    return [LOCUST, "-f", str(ROOT / "loadgen"), "--headless", "--host", target,
            "--results-dir", str(results_dir), "--run-id", "run", "--only-summary", *args]  # fmt: skip


def master_cmd(server: ServerProcess, results_dir: Path, port: int, workers: int, *args: str) -> list[str]:
    """A headless master on 127.0.0.1:`port` that waits for `workers` workers."""
    return locust_cmd(server, results_dir, "--master", "--master-bind-host", "127.0.0.1",
                      "--master-bind-port", str(port), "--expect-workers", str(workers), *args)  # fmt: skip


def worker_cmd(port: int) -> list[str]:
    """A worker of the master on 127.0.0.1:`port`."""
    return [
        LOCUST,
        "-f",
        str(ROOT / "loadgen"),
        "--worker",
        "--master-host",
        "127.0.0.1",
        "--master-port",
        str(port),
    ]


def run_locust(
    server: ServerProcess | None, results_dir: Path, *args: str, timeout: float = 240, host: str | None = None
) -> LocustRun:
    proc = subprocess.run(
        locust_cmd(server, results_dir, *args, host=host),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=results_dir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    return LocustRun(proc, results_dir / "run")


SHORT_PLAN = """
latency: {duration_s: 4, users: 2}
throughput: {phase_s: 2, users: 2}
batch: {duration_s: 3, percentile: 50.0}  # 3 s of batches of 32 bound a median, not a p99 (loadtest.stats)
memory: {duration_s: 3, users: 2}
concurrency: {users: 4, requests_per_user: 20}
stress: {start_users: 1, max_users: 16, step_s: 3, p99_ms: 100.0}
spike: {base_users: 1, spike_users: 6, base_s: 3, spike_s: 3, recovery_s: 3, recovery_factor: 20.0}
soak: {users: 2, duration_s: 8, leak_warmup_s: 2}
"""


@pytest.fixture
def short_plan(tmp_path: Path) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(SHORT_PLAN)
    return path


# -- training tests ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's tests: their models are tiny, and on a busy
    machine two threads spin-wait (the sweep's workers run with one too)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def copy_training_cases(folder: Path) -> Path:
    """The models built to break each check, copied where a user keeps a model file
    (with the neighbour it imports); returns the FILE.py the specs name."""
    here = Path(__file__).resolve().parent
    for name in ("training_cases.py", "training_blocks.py"):
        shutil.copy(here / name, folder / name)
    return folder / "training_cases.py"


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_training_cases(tmp_path_factory.mktemp("user-models"))
