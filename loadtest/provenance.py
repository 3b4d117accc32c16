"""Where the numbers come from: harness version and git SHA, libraries, hardware."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import psutil

from loadtest.results import Hardware, Harness, LocalGpu

LIBRARIES = ("modelsoak", "locust", "grpcio", "protobuf", "numpy", "hdrhistogram", "onnxruntime", "torch")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_sha() -> str:
    """The harness's commit, when it runs from a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    if out.returncode != 0 or not sha:
        return os.environ.get("MODELSOAK_GIT_SHA", "unknown")
    dirty = subprocess.run(
        ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    ).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _local_gpu() -> list[LocalGpu]:
    try:
        import pynvml

        pynvml.nvmlInit()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            gpus.append(
                LocalGpu(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_total_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                )
            )
        return gpus
    except Exception:  # no NVML or no GPU: the load generator rarely has one
        return []


@dataclass
class Collected:
    harness: Harness
    libraries: dict[str, str]
    hardware: Hardware


def collect() -> Collected:
    return Collected(
        harness=Harness(version=_version("modelsoak") or "unknown", git_sha=git_sha()),
        libraries={name: v for name in LIBRARIES if (v := _version(name))},
        hardware=Hardware(
            hostname=platform.node(),
            os=f"{platform.system()} {platform.release()}",
            python=platform.python_version(),
            cpu=_cpu_model(),
            cpu_count=os.cpu_count(),
            memory_bytes=psutil.virtual_memory().total,
            gpus=_local_gpu(),
        ),
    )
