"""Where a training result comes from: harness commit, libraries, device, seeds."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

LIBRARIES = ("modelsoak", "torch", "numpy", "scikit-learn")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> subprocess.CompletedProcess[str] | None:
    here = Path(__file__).resolve().parent
    try:
        return subprocess.run(
            ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None


def git_sha() -> str:
    """The harness's commit (with -dirty when tracked files changed), or MODELSOAK_GIT_SHA."""
    out = _git("rev-parse", "HEAD")
    if out is None or out.returncode != 0 or not out.stdout.strip():
        return os.environ.get("MODELSOAK_GIT_SHA", "unknown")
    status = _git("status", "--porcelain", "--untracked-files=no")
    dirty = bool(status and status.stdout.strip())
    return out.stdout.strip() + ("-dirty" if dirty else "")


def resolve_device(name: str) -> torch.device:
    """auto → cuda when available, else cpu; cuda without a GPU is a setup error."""
    from training.errors import SetupError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SetupError(f"--device {name}: CUDA is not available here (torch {torch.__version__})")
        return torch.device(name)
    raise SetupError(f"--device {name!r}: expected auto, cpu or cuda[:N]")


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        info["name"] = torch.cuda.get_device_name(idx)
        info["cuda"] = torch.version.cuda
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(idx)))
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def collect(device: torch.device | str = "cpu", seeds: list[int] | None = None) -> dict[str, Any]:
    """Provenance block for a summary: same keys for check, studies and bench."""
    dev = torch.device(device) if isinstance(device, str) else device
    return {
        "git_sha": git_sha(),
        "harness_version": _version("modelsoak") or "unknown",
        "torch_version": torch.__version__,
        "libraries": {name: v for name in LIBRARIES if (v := _version(name))},
        "device": device_info(dev),
        "seeds": list(seeds or []),
        "host": {
            "hostname": platform.node(),
            "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}",
            "cpu_count": os.cpu_count(),
        },
    }
