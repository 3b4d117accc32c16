"""Admin actions: refused by default, token-checked when enabled, refusals counted; profiling bounded."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from server.proto import grpc_service_pb2 as pb
from tests.conftest import ServerProcess, infer_request
from tests.server_support import get_json, wait_until

TOKEN = "s3cret-admin-token"


@pytest.fixture(scope="module")
def default_server(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_module_server("--model", "identity")


@pytest.fixture(scope="module")
def admin_server(
    start_module_server: Callable[..., ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    folder = tmp_path_factory.mktemp("admin")
    (folder / "token").write_text(TOKEN + "\n")
    return start_module_server(
        "--model", "mlp", "--allow-profiling", "--model-control-mode", "explicit",
        "--admin-token-file", str(folder / "token"), "--profile-dir", str(folder / "profiles"),
        "--profile-max-requests", "50", "--profile-max-s", "2",
    )  # fmt: skip


def _http(url: str, method: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _refused(server: ServerProcess) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(server.metrics_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("modelsoak_admin_refused_total{"):
            labels, value = line[len("modelsoak_admin_refused_total{") :].split("} ")
            kv = dict(part.split("=") for part in labels.split(","))
            out[(kv["action"].strip('"'), kv["reason"].strip('"'))] = float(value)
    return out


def test_unload_is_refused_by_default_and_the_model_keeps_serving(default_server: ServerProcess) -> None:
    stub = default_server.stub()
    for call, req in ((stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="identity")),
                      (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="identity"))):  # fmt: skip
        with pytest.raises(grpc.RpcError) as err:
            call(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--model-control-mode explicit" in (err.value.details() or "")
    x = np.ones((1, 4), np.float32)
    assert default_server.stub().ModelInfer(infer_request("identity", {"INPUT0": x}), timeout=10).outputs
    assert _refused(default_server)[("repository", "disabled")] >= 2
    assert "admin action repository refused (disabled)" in default_server.log()


@pytest.mark.faults
def test_profiling_is_refused_by_default(default_server: ServerProcess) -> None:
    code, doc = _http(default_server.metrics_url + "/profile?model=identity&requests=999999999999", "POST")
    assert code == 403 and "--allow-profiling" in doc["error"]
    code, doc = _http(default_server.metrics_url + "/profile?model=identity", "DELETE")
    assert code == 403
    assert _refused(default_server)[("profiling", "disabled")] >= 2


@pytest.mark.parametrize("token", [None, "wrong", TOKEN[:-1]])
def test_admin_actions_need_the_token(admin_server: ServerProcess, token: str | None) -> None:
    reason = "missing_token" if token is None else "bad_token"
    before = _refused(admin_server)
    code, doc = _http(admin_server.metrics_url + "/profile?model=mlp&requests=5", "POST", token)
    assert code == 401 and "token" in doc["error"]
    metadata = None if token is None else (("authorization", f"Bearer {token}"),)
    with pytest.raises(grpc.RpcError) as err:
        admin_server.stub().RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="mlp"), metadata=metadata, timeout=10
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    after = _refused(admin_server)
    for action in ("profiling", "repository"):
        assert after[(action, reason)] == before.get((action, reason), 0) + 1


def test_repository_control_with_the_token(admin_server: ServerProcess) -> None:
    stub = admin_server.stub()
    auth = (("authorization", f"Bearer {TOKEN}"),)
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mlp"), metadata=auth, timeout=30)
    assert not stub.ModelReady(pb.ModelReadyRequest(name="mlp"), timeout=10).ready
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"), metadata=auth, timeout=120)
    assert stub.ModelReady(pb.ModelReadyRequest(name="mlp"), timeout=10).ready


@pytest.mark.faults
def test_profiling_caps_one_job_per_model_and_cancel(admin_server: ServerProcess) -> None:
    url = admin_server.metrics_url + "/profile"
    code, doc = _http(url + "?model=mlp&requests=999999999999", "POST", TOKEN)
    assert code == 400 and "cap of 50 requests" in doc["error"], doc
    code, job = _http(url + "?model=mlp&requests=40", "POST", TOKEN)
    assert code == 202 and job["state"] == "recording", job
    code, doc = _http(url + "?model=mlp&requests=10", "POST", TOKEN)
    assert code == 409 and "already being profiled" in doc["error"]
    code, doc = _http(url + "?model=mlp", "DELETE", TOKEN)
    assert code == 200 and doc["id"] == job["id"]
    done = wait_until(
        lambda: next(j for j in get_json(url)["jobs"] if j["id"] == job["id"]),
        lambda j: j["state"] != "recording", 30, "cancelled profile",
    )  # fmt: skip
    assert done["state"] == "stopped" and "cancelled" in done["stopped_because"], done
    code, doc = _http(url + "?model=mlp", "DELETE", TOKEN)
    assert code == 404


@pytest.mark.faults
def test_profiling_stops_at_its_time_cap(admin_server: ServerProcess) -> None:
    url = admin_server.metrics_url + "/profile"
    code, job = _http(url + "?model=mlp&requests=50", "POST", TOKEN)
    assert code == 202, job
    stub = admin_server.stub()
    stub.ModelInfer(infer_request("mlp", {"INPUT0": np.ones((1, 256), np.float32)}), timeout=10)
    # Fewer requests than asked for: only the 2 s cap (--profile-max-s) ends it.
    done = wait_until(
        lambda: next(j for j in get_json(url)["jobs"] if j["id"] == job["id"]),
        lambda j: j["state"] != "recording", 30, "profile stopped by its time cap",
    )  # fmt: skip
    assert done["state"] == "stopped" and "profile_max_s" in done["stopped_because"], done
    assert done["seen"] >= 1 and done["traces"] and Path(done["traces"][0]).exists()


def test_a_profile_over_the_cap_at_start_up_exits_2(tmp_path: Path, model_cache: Path) -> None:
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "server", "--model", "identity", "--cache-dir", str(model_cache),
         "--profile-requests", "20000", "--grpc-port", "0", "--metrics-port", "-1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 2 and "profile_max_requests=10000" in run.stderr, run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "server", "--admin-token-file", str(tmp_path / "absent"),
         "--grpc-port", "0", "--metrics-port", "-1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 2 and "admin_token_file" in run.stderr, run.stderr


@pytest.mark.faults
def test_profiling_stops_at_its_memory_cap(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    # `leaky` keeps 256 KiB per request: a profile capped at 4 MiB of RSS growth must stop
    # by that cap within ~16 requests, long before the 100,000 it asked for.
    srv = start_server("--model", "leaky", "--param", "leak_bytes=262144", "--allow-profiling",
                       "--profile-max-requests", "100000", "--profile-max-bytes", str(4 * 1024 * 1024),
                       "--profile-dir", str(tmp_path / "profiles"))  # fmt: skip
    url = srv.metrics_url + "/profile"
    code, job = _http(url + "?model=leaky&requests=100000", "POST")
    assert code == 202, job
    stub = srv.stub()

    def one_more() -> dict[str, Any]:
        stub.ModelInfer(infer_request("leaky", {"INPUT0": np.ones((1, 4), np.float32)}), timeout=10)
        return next(j for j in get_json(url)["jobs"] if j["id"] == job["id"])

    done = wait_until(one_more, lambda j: j["state"] != "recording", 60, "profile stopped by its memory cap")
    assert done["state"] == "stopped" and "profile_max_bytes" in done["stopped_because"], done
    assert done["seen"] < 1000, done
