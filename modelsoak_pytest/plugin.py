"""The pytest hooks and fixtures (registered through the `pytest11` entry point)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported in the fixtures: loading the plugin stays cheap
    from modelsoak_pytest.processes import LoadResult, ServedModel, TrainingResult

MARKERS = {
    "performance": "a performance test on modelsoak (latency, throughput, memory)",
    "soak": "a long-run stability test (its duration follows --modelsoak-duration)",
    "gpu": "needs a CUDA GPU; skipped with the reason when there is none",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("modelsoak", "modelsoak performance tests")
    g.addoption("--modelsoak-duration", type=int, default=5,
                help="seconds each timed load phase runs (default 5; CI keeps it short)")  # fmt: skip
    g.addoption("--modelsoak-results", default="modelsoak-results",
                help="folder for the servers' logs, profiles and each load test's report")  # fmt: skip
    g.addoption("--modelsoak-baseline", default=None,
                help="summary.json of an earlier run that regression tests compare against")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def _no_gpu_reason() -> str | None:
    from server.config import default_device

    return None if default_device() == "cuda" else "needs a CUDA GPU: none is visible to torch on this machine"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [i for i in items if i.get_closest_marker("gpu")]
    reason = _no_gpu_reason() if gpu_items else None
    for item in gpu_items:
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def modelsoak_duration(request: pytest.FixtureRequest) -> int:
    seconds = int(request.config.getoption("--modelsoak-duration"))
    if seconds < 1:
        raise pytest.UsageError(f"--modelsoak-duration {seconds}: expected whole seconds >= 1")
    return seconds


@pytest.fixture(scope="session")
def modelsoak_results(request: pytest.FixtureRequest) -> Path:
    path = Path(request.config.getoption("--modelsoak-results")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def modelsoak_baseline(request: pytest.FixtureRequest) -> Path | None:
    given = request.config.getoption("--modelsoak-baseline")
    if given and not Path(given).is_file():
        raise pytest.UsageError(f"--modelsoak-baseline {given}: no such file; expected a summary.json")
    return Path(given) if given else None


@pytest.fixture(scope="session")
def served_model(modelsoak_results: Path) -> Iterator[Callable[..., ServedModel]]:
    """served_model("mlp", "--max-batch-size", "32") -> a running server (one per
    distinct arguments for the session), stopped at the end."""
    from modelsoak_pytest.processes import ServedModel

    running: dict[tuple[str, ...], ServedModel] = {}

    def start(model: str = "identity", *args: str) -> ServedModel:
        key = (model, *args)
        if key not in running:
            running[key] = ServedModel(["--model", model, *args], modelsoak_results / "servers")
        return running[key]

    yield start
    for server in running.values():
        server.stop()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:80]


@pytest.fixture
def load_test(request: pytest.FixtureRequest, modelsoak_results: Path) -> Callable[..., LoadResult]:
    """load_test(server_or_host, "latency", {"latency": {...}}, *locust_flags) -> LoadResult."""
    from modelsoak_pytest.processes import ServedModel, run_load_test

    count = [0]

    def run(target: ServedModel | str, scenario: str, plan: dict[str, Any], *extra: str) -> LoadResult:
        count[0] += 1
        run_id = f"{_safe(request.node.name)}-{count[0]}"
        if isinstance(target, ServedModel):
            return run_load_test(target.host, scenario, plan, modelsoak_results / "load", run_id, *extra,
                                 server_metrics_url=target.metrics_url)  # fmt: skip
        return run_load_test(target, scenario, plan, modelsoak_results / "load", run_id, *extra)

    return run


@pytest.fixture
def training_run(request: pytest.FixtureRequest, modelsoak_results: Path) -> Callable[..., TrainingResult]:
    """training_run("check", "--model", "digits-cnn", ...) -> TrainingResult."""
    from modelsoak_pytest.processes import run_training

    count = [0]

    def run(command: str, *args: str) -> TrainingResult:
        count[0] += 1
        return run_training(command, list(args), modelsoak_results / "training",
                            f"{_safe(request.node.name)}-{count[0]}")  # fmt: skip

    return run
