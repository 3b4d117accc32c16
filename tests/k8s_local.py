"""Run an overlay's pod templates as local processes (tests/test_k8s.py).

Running a pod here changes only what has to change, and all of it is in
`Rewrites` and `LocalCluster`:

- host names: every Service of the overlay (short or namespaced DNS name) is
  127.0.0.1, and the bind-all address 0.0.0.0 is 127.0.0.1 too;
- ports: every port the pods declare (and every Service port, through its
  targetPort) gets a free local port, rewritten where a value is that port
  number, or ends with ":PORT" or "=PORT";
- paths: each volume mount becomes a folder here (a ConfigMap's keys written as
  files, an emptyDir a fresh folder, a claim one folder per claim name), and the
  image's own folders too (/app -> this repository, the Dockerfile's ENV paths
  -> folders here); a value that starts with one of those paths (or has it after
  "=") is rewritten, and TMPDIR points at the pod's /tmp mount;
- the image: our image's commands run from this virtual environment with the
  Dockerfile's ENV; another image's entry point is its Debian package's binary;
- downward API values (fieldRef) are made-up pod names;
- each container's terminationMessagePath is a file beside its log
  (`LocalCluster.termination_message`).

Everything else -- command, args, env, the plan, the probes -- is what the
manifest says. Each process starts in an empty folder that stands for the
read-only root filesystem, and a test checks it stays empty.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.netutil import free_port
from tests.k8s_support import VENV_BIN, image_env, one, pod_templates

# Images other than ours: the image's entry point, as a local binary.
ENTRYPOINTS = {"prom/pushgateway": ["prometheus-pushgateway"]}


# -- the rewrites ------------------------------------------------------------------------------


@dataclass
class Rewrites:
    """Pod world -> this machine: host names, ports, paths (see the module doc)."""

    hosts: list[str]
    ports: dict[int, int]
    paths: dict[str, Path]

    def text(self, value: str) -> str:
        value = value.replace("0.0.0.0", "127.0.0.1")
        if self.hosts:
            names = "|".join(re.escape(h) for h in sorted(self.hosts, key=len, reverse=True))
            value = re.sub(rf"(?<![\w.-])(?:{names})(?![\w-])", "127.0.0.1", value)
        value = re.sub(r"(?:(?<=[:=])|^)(\d{2,5})(?=/|$)", self._port, value)
        if self.paths:
            prefixes = "|".join(re.escape(p) for p in sorted(self.paths, key=len, reverse=True))
            value = re.sub(rf"(?:(?<==)|^)({prefixes})(?=/|$)", lambda m: str(self.paths[m.group(1)]), value)
        return value

    def _port(self, m: re.Match[str]) -> str:
        return str(self.ports.get(int(m.group(1)), m.group(1)))


def service_hosts(docs: list[dict[str, Any]]) -> list[str]:
    out = []
    for svc in (d for d in docs if d["kind"] == "Service"):
        name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
        out += [f"{name}.{ns}.svc.cluster.local", f"{name}.{ns}.svc", f"{name}.{ns}", name]
    return out


def port_map(docs: list[dict[str, Any]]) -> dict[int, int]:
    """A free local port for every declared container port; each Service port
    goes where its targetPort goes."""
    ports: dict[int, int] = {}
    named: dict[tuple[str, str], int] = {}
    for _, tpl in pod_templates(docs):
        for c in tpl["spec"]["containers"]:
            for p in c.get("ports", []):
                ports.setdefault(p["containerPort"], free_port())
                named[(tpl["metadata"]["labels"]["app.kubernetes.io/component"], p["name"])] = p[
                    "containerPort"
                ]
    for svc in (d for d in docs if d["kind"] == "Service"):
        component = svc["spec"]["selector"]["app.kubernetes.io/component"]
        for p in svc["spec"]["ports"]:
            target = p["targetPort"]
            number = named[(component, target)] if isinstance(target, str) else target
            assert ports.setdefault(p["port"], ports[number]) == ports[number], (
                f"port {p['port']} is ambiguous"
            )
    return ports


# -- pods as processes -------------------------------------------------------------------------


@dataclass
class LocalPod:
    name: str
    spec: dict[str, Any]
    mounts: dict[str, Path]
    root: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: list[Any] = field(default_factory=list)


@dataclass
class LocalCluster:
    """Runs an overlay's pod templates here (see the module doc for the rewrites)."""

    docs: list[dict[str, Any]]
    base: Path
    image_paths: dict[str, Path]
    edit_configmap: Callable[[str, dict[str, str]], dict[str, str]] = lambda name, data: data
    pods: list[LocalPod] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ports = port_map(self.docs)
        self.claims: dict[str, Path] = {}
        self.home = self.base / "home"
        self.home.mkdir(parents=True, exist_ok=True)

    def template(self, kind: str, name: str) -> dict[str, Any]:
        return one(self.docs, kind, name)["spec"]["template"]

    def start(self, kind: str, name: str, suffix: str = "local") -> LocalPod:
        pod_name = f"{name}-{suffix}"
        spec = self.template(kind, name)["spec"]
        folder = self.base / "pods" / pod_name
        pod = LocalPod(pod_name, spec, {}, folder / "root")
        pod.root.mkdir(parents=True)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                assert "subPath" not in m, "subPath mounts are not modelled"
                pod.mounts[m["mountPath"]] = self._volume(volumes[m["name"]], folder / "volumes")
            # The kubelet's termination-message file: one per container, here beside its log.
            pod.mounts[c.get("terminationMessagePath", "/dev/termination-log")] = folder / f"{c['name']}.termination"
        for c in spec["containers"]:
            argv, env = self.command(c, pod)
            log = (folder / f"{c['name']}.log").open("wb")
            pod.logs.append(log)
            pod.procs[c["name"]] = subprocess.Popen(
                argv, cwd=pod.root, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.pods.append(pod)
        return pod

    def _volume(self, volume: dict[str, Any], folder: Path) -> Path:
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            return self.claims.setdefault(claim, _mkdir(self.base / "claims" / claim))
        path = _mkdir(folder / volume["name"])
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            data = self.edit_configmap(name, dict(one(self.docs, "ConfigMap", name)["data"]))
            for key, text in data.items():
                (path / key).write_text(text)
        else:
            assert "emptyDir" in volume, f"volume {volume['name']}: kind not modelled"
        return path

    def rewrites(self, pod: LocalPod) -> Rewrites:
        return Rewrites(service_hosts(self.docs), self.ports, {**self.image_paths, **pod.mounts})

    def command(self, c: dict[str, Any], pod: LocalPod) -> tuple[list[str], dict[str, str]]:
        rw = self.rewrites(pod)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "MODELSOAK_"))}
        image = c["image"].split(":")[0]
        if image == "modelsoak":
            env.update({k: rw.text(v) for k, v in image_env().items()})
            argv = [str(VENV_BIN / c["command"][0]), *c["command"][1:]]
        else:
            assert "command" not in c, f"{c['name']}: a command in another image is not modelled"
            entry = ENTRYPOINTS[image]
            argv = [shutil.which(entry[0]) or entry[0], *entry[1:]]
        if "/tmp" in pod.mounts:
            env["TMPDIR"] = str(pod.mounts["/tmp"])
        defined: dict[str, str] = {}  # what $(VAR) may refer to: the container's env so far
        for e in c.get("env", []):
            if "value" in e:
                defined[e["name"]] = rw.text(_expand(e["value"], defined))
            else:
                assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", e
                defined[e["name"]] = pod.name
        env.update(defined)
        argv += [rw.text(_expand(a, defined)) for a in c.get("args", [])]
        return argv, env

    def wait_ready(self, pod: LocalPod, timeout: float = 120.0) -> None:
        """Poll each container's readinessProbe (grpc or httpGet) on its local port."""
        end = time.monotonic() + timeout
        for c in pod.spec["containers"]:
            probe = c.get("readinessProbe")
            if probe is None:
                continue
            while not _probe_ok(probe, c, self.ports):
                proc = pod.procs[c["name"]]
                assert proc.poll() is None, f"{pod.name}/{c['name']} exited with {proc.returncode}"
                assert time.monotonic() < end, f"{pod.name}/{c['name']} not ready in {timeout} s"
                time.sleep(0.2)

    def termination_message(self, pod: LocalPod, container: str) -> str:
        path = self.base / "pods" / pod.name / f"{container}.termination"
        return path.read_text() if path.exists() else ""

    def log(self, pod: LocalPod, container: str) -> str:
        return (self.base / "pods" / pod.name / f"{container}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for pod in self.pods:
            for proc in pod.procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in pod.procs.values():
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for log in pod.logs:
                log.close()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) references to variables defined before."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def _probe_ok(probe: dict[str, Any], c: dict[str, Any], ports: dict[int, int]) -> bool:
    names = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if "grpc" in probe:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        port = ports[probe["grpc"]["port"]]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            req = health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", ""))
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(req, timeout=2)
            except grpc.RpcError:
                return False
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
    get = probe["httpGet"]
    port = ports[names.get(get["port"], get["port"])]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{get.get('path', '/')}", timeout=2) as resp:
            return bool(200 <= resp.status < 400)
    except OSError:
        return False
