"""Kubernetes manifests, checked offline, and the soak overlay run here.

Every overlay renders (`kubectl kustomize`) and passes `kubernetes-validate
--strict`; the Prometheus Operator objects are checked against the fields their
CRDs define and against the Services and pods they select, and the rules with
`promtool check rules`; the generated rules and dashboards equal exporters/;
every pod template is locked down; probes, termination, the Job's verdict
plumbing and the NetworkPolicies say what they should. Then the soak overlay's
server, Pushgateway, Job master and workers run as local processes
(tests/k8s_local.py lists every rewrite) and the master's exit code -- the Job's
status -- is 0 for a plan that holds and 3 for one that cannot; the interactive
master and a worker run here too.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s_local import ENTRYPOINTS, LocalCluster
from tests.k8s_support import (
    CR_KINDS,
    IMAGE_USER,
    K8S,
    OVERLAYS,
    ROOT,
    env_of,
    monitor_schema,
    one,
    pod_templates,
    render,
    run_prepare_step,
    selects,
)

# -- rendering and schemas -----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    core = [d for d in docs if d["kind"] not in CR_KINDS]
    assert {d["kind"] for d in docs} - {d["kind"] for d in core} == set(CR_KINDS)
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(core))
    proc = _validate(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(d["metadata"].get("namespace") == "modelsoak" for d in docs if d["kind"] != "Namespace")


def test_results_reader_validates_strictly() -> None:
    proc = _validate(K8S / "tools" / "results-reader.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# The oldest Kubernetes the manifests are for (docs/how-to/kubernetes.md), and the newest schemas.
KUBERNETES_VERSIONS = ("1.29", "")


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "kubernetes-validate"
    assert exe.exists(), "kubernetes-validate is missing: pip install -e '.[dev]'"
    for version in KUBERNETES_VERSIONS:
        pin = ["-k", version] if version else []
        cmd = [str(exe), "--strict", "--quiet", *pin, str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            break
    return proc


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitors_match_crd_fields_and_select_real_ports(overlay: str) -> None:
    import jsonschema

    docs = render(overlay)
    for mon in (d for d in docs if d["kind"] in ("ServiceMonitor", "PodMonitor")):
        jsonschema.validate(mon, monitor_schema(mon["kind"]))
        selector = mon["spec"]["selector"]["matchLabels"]
        if mon["kind"] == "ServiceMonitor":
            services = [
                s for s in docs if s["kind"] == "Service" and selects(selector, s["metadata"]["labels"])
            ]
            assert services, f"{mon['metadata']['name']} selects no Service"
            names = {p["name"] for s in services for p in s["spec"]["ports"]}
            endpoints = mon["spec"]["endpoints"]
        else:
            pods = [t for _, t in pod_templates(docs) if selects(selector, t["metadata"]["labels"])]
            assert pods, f"{mon['metadata']['name']} selects no pod"
            names = {p["name"] for t in pods for c in t["spec"]["containers"] for p in c.get("ports", [])}
            endpoints = mon["spec"]["podMetricsEndpoints"]
        for ep in endpoints:
            assert ep["port"] in names, (mon["metadata"]["name"], ep["port"], names)
            jobs = {r.get("replacement") for r in ep.get("relabelings", []) if r.get("targetLabel") == "job"}
            assert jobs and jobs <= {"modelsoak-server", "modelsoak-loadgen", "modelsoak-pushgateway"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_rule_passes_promtool(overlay: str, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (make system-deps)"
    rule = one(render(overlay), "PrometheusRule", "modelsoak-alerts")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and set(rule["spec"]) == {"groups"}
    # The rule file's own name, beside its unit tests: the cluster's copy must pass them too.
    (tmp_path / "modelsoak-alerts.yml").write_text(yaml.safe_dump(rule["spec"]))
    shutil.copy(ROOT / "exporters" / "rules" / "modelsoak-alerts.test.yml", tmp_path)
    for cmd in (["check", "rules", "modelsoak-alerts.yml"], ["test", "rules", "modelsoak-alerts.test.yml"]):
        proc = subprocess.run([promtool, *cmd], cwd=tmp_path, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generated_copies_equal_exporters() -> None:
    proc = subprocess.run(
        [sys.executable, str(K8S / "sync.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    docs = render("cpu")
    dashboards = one(docs, "ConfigMap", "modelsoak-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    sources = {p.name: p.read_text() for p in (ROOT / "exporters" / "dashboards").glob("*.json")}
    assert sources and dashboards["data"] == sources
    for text in dashboards["data"].values():
        json.loads(text)
    rules = yaml.safe_load((ROOT / "exporters" / "rules" / "modelsoak-alerts.yml").read_text())
    assert one(docs, "PrometheusRule", "modelsoak-alerts")["spec"] == rules


# -- what every pod must be ------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_locked_down(overlay: str) -> None:
    docs = render(overlay)
    for owner, tpl in pod_templates(docs):
        spec, where = tpl["spec"], f"{owner['kind']}/{owner['metadata']['name']}"
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, where
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        writable = {
            v["name"] for v in spec.get("volumes", []) if "emptyDir" in v or "persistentVolumeClaim" in v
        }
        for c in spec["containers"]:
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert csc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert csc["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) & set(c["resources"]["limits"]), where
            if c["image"].startswith("modelsoak:"):
                assert sc["runAsUser"] == IMAGE_USER, where
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                assert mounts.get("/tmp") in writable, (where, "needs a writable /tmp")
                for path in _written_paths(c):
                    assert any(path.startswith(m) and mounts[m] in writable for m in mounts), (where, path)


def _written_paths(container: dict[str, Any]) -> list[str]:
    """Directories our processes write to, from their settings."""
    env = env_of(container)
    keys = ("MODELSOAK_SERVER_PROFILE_DIR", "LOCUST_RESULTS_DIR")
    return [env[k] for k in keys if k in env]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_probes_and_termination(overlay: str) -> None:
    docs = render(overlay)
    server = one(docs, "Deployment", "modelsoak-server")
    spec = server["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    env = env_of(c)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {
        "grpc": int(env["MODELSOAK_SERVER_GRPC_PORT"]),
        "metrics": int(env["MODELSOAK_SERVER_METRICS_PORT"]),
    }
    assert ports == {"grpc": 8001, "metrics": 8002}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == 8001
        assert c[probe]["grpc"].get("service", "") in ("", "inference.GRPCInferenceService")
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > float(env["MODELSOAK_SERVER_GRACE_S"]) + float(pre_stop[1])
    service = one(docs, "Service", "modelsoak-server")
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("grpc", 8001), ("metrics", 8002)}
    gpu = c["resources"]["limits"].get("nvidia.com/gpu")
    if overlay == "gpu":
        assert gpu == 1 and env["MODELSOAK_SERVER_DEVICE"] == "cuda" and c["image"] == "modelsoak:0.1.0-cuda"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert server["spec"]["strategy"] == {"type": "Recreate"}, "one GPU: no surge pod"
        others = [x for _, t in pod_templates(docs) for x in t["spec"]["containers"] if x is not c]
        assert all("cuda" not in x["image"] for x in others), "Locust stays on the CPU image"
    else:
        assert gpu is None and env["MODELSOAK_SERVER_DEVICE"] == "cpu" and c["image"] == "modelsoak:0.1.0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_soak_job(overlay: str) -> None:
    docs = render(overlay)
    job, workers = one(docs, "Job", "modelsoak-soak"), one(docs, "Job", "modelsoak-soak-workers")
    for j in (job, workers):
        assert j["spec"]["backoffLimit"] == 0
        assert j["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    (master,) = job["spec"]["template"]["spec"]["containers"]
    env = env_of(master)
    assert "--master" in master["args"] and "--headless" in master["args"]
    assert (
        int(env["LOCUST_EXPECT_WORKERS"]) == workers["spec"]["parallelism"] == workers["spec"]["completions"]
    )
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"] == {
        "containerName": "master",
        "operator": "NotIn",
        "values": [0],
    }
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in master["volumeMounts"]}
    plan_dir, plan_file = env["LOCUST_SLO_FILE"].rsplit("/", 1)
    plan = yaml.safe_load(one(docs, "ConfigMap", mounts[plan_dir]["configMap"]["name"])["data"][plan_file])
    assert "persistentVolumeClaim" in mounts[env["LOCUST_RESULTS_DIR"]]
    one(
        docs, "PersistentVolumeClaim", mounts[env["LOCUST_RESULTS_DIR"]]["persistentVolumeClaim"]["claimName"]
    )
    for url_key in ("LOCUST_HOST", "LOCUST_PUSHGATEWAY", "LOCUST_SERVER_METRICS_URL"):
        host = re.sub(r"^\w+://", "", env[url_key]).split(":")[0]
        one(docs, "Service", host)
    assert env["LOCUST_SCENARIO"] == "soak"
    if overlay == "soak":
        assert env["LOCUST_RUN_TIME"] == "24h" and plan["soak"]["duration_s"] == 86400
        assert job["spec"]["activeDeadlineSeconds"] > 86400
    else:
        assert plan["soak"]["duration_s"] < job["spec"]["activeDeadlineSeconds"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_soak_workers_fail_their_job_when_the_master_is_lost(overlay: str) -> None:
    """A worker that loses its master exits 4 (loadtest/watchdog.py): the workers'
    Job fails on that exit code, not after retries, and each pod says why in its
    termination message (the file the worker writes, or its log's tail)."""
    docs = render(overlay)
    for name, container_name in (("modelsoak-soak-workers", "worker"), ("modelsoak-soak", "master")):
        job = one(docs, "Job", name)
        assert job["spec"]["backoffLimit"] == 0
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        (c,) = job["spec"]["template"]["spec"]["containers"]
        assert c["name"] == container_name
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert env_of(c)["LOCUST_TERMINATION_LOG"] == c.get("terminationMessagePath", "/dev/termination-log")
    rules = one(docs, "Job", "modelsoak-soak-workers")["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "worker", "operator": "In", "values": [4]},
    }
    assert rules[-1]["action"] == "FailJob" and rules[-1]["onExitCodes"]["values"] == [0]
    (worker,) = one(docs, "Job", "modelsoak-soak-workers")["spec"]["template"]["spec"]["containers"]
    assert float(env_of(worker)["LOCUST_MASTER_TIMEOUT_S"]) <= 5


def test_network_policies_admit_only_the_right_peers() -> None:
    docs = render("cpu")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = {o["metadata"]["name"]: t for o, t in pod_templates(docs)}
    for name, tpl in pods.items():
        assert any(
            selects(p["spec"]["podSelector"]["matchLabels"], tpl["metadata"]["labels"]) for p in policies
        ), name

    def peers(target: str, port: str) -> list[dict[str, Any]]:
        labels = pods[target]["metadata"]["labels"]
        out = []
        for pol in policies:
            if selects(pol["spec"]["podSelector"]["matchLabels"], labels):
                for rule in pol["spec"].get("ingress", []):
                    if any(p["port"] == port for p in rule["ports"]):
                        out += rule.get("from", [{"everyone": True}])
        return out

    def admitted(peer_list: list[dict[str, Any]]) -> set[str]:
        return {n for n, t in pods.items() for p in peer_list
                if "namespaceSelector" not in p and "podSelector" in p
                and selects(p["podSelector"]["matchLabels"], t["metadata"]["labels"])}  # fmt: skip

    workers = {"modelsoak-locust-worker", "modelsoak-soak-workers"}
    masters = {"modelsoak-locust-master", "modelsoak-soak"}
    assert admitted(peers("modelsoak-server", "grpc")) == workers
    assert admitted(peers("modelsoak-server", "metrics")) == masters
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}  # fmt: skip
    for target, port in (
        ("modelsoak-server", "metrics"),
        ("modelsoak-soak", "metrics"),
        ("modelsoak-pushgateway", "http"),
    ):
        assert prometheus in peers(target, port), (target, port)
    assert admitted(peers("modelsoak-soak", "master")) == workers
    assert admitted(peers("modelsoak-pushgateway", "http")) == masters
    for worker in workers:
        assert not peers(worker, "any")
    # Locust's web UI starts and stops tests without a login: never open to everyone nor
    # to other namespaces (only this namespace's pods and Prometheus), never exposed on
    # a node or load balancer; the docs and the manifest say to port-forward to it.
    web_peers = peers("modelsoak-locust-master", "web")
    assert web_peers and {"everyone": True} not in web_peers
    assert all(p == {"podSelector": {}} or p == prometheus for p in web_peers), web_peers
    service = one(docs, "Service", "modelsoak-locust")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert "port-forward svc/modelsoak-locust 8089" in (K8S / "base" / "locust-interactive.yaml").read_text()


# -- the soak overlay, run here ------------------------------------------------------------------

# The only changes to what the soak overlay says, beyond tests/k8s_local.py's
# rewrites: a run of seconds instead of 24 hours.
RUN_TIME = "60s"  # Locust's -t: the hard stop, above the plan's duration
SHORT_SOAK: dict[str, float | None] = {"duration_s": 12, "leak_warmup_s": 3}
# The plan's p99 of 100 ms is for a cluster; here one small machine runs the
# server, the master and both workers, and timing is not asserted in tests
# (speed is measured in bench/, docs/explanation/benchmarks.md). The passing run drops it;
# the failing run sets one nothing meets.
NO_LATENCY_SLO: dict[str, float | None] = {"p99_ms": None}


@dataclass
class SoakHere:
    cluster: LocalCluster
    image_cache: Path
    cache_before: dict[str, tuple[int, int]]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _plan_editor(extra: dict[str, float | None]) -> Callable[[str, dict[str, str]], dict[str, str]]:
    def edit(name: str, data: dict[str, str]) -> dict[str, str]:
        if not name.startswith("modelsoak-soak-plan"):
            return data
        plan = yaml.safe_load(data["plan.yaml"])
        plan["soak"].update({**SHORT_SOAK, **extra})
        return {**data, "plan.yaml": yaml.safe_dump(plan)}

    return edit


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoakHere]:
    """The image's model cache made by the Dockerfile's own step, and the soak
    overlay's server (and Pushgateway, where Debian's is installed) ready on it."""
    from server.builtin import BUILTIN_MODELS

    cache = run_prepare_step(tmp_path_factory.mktemp("image"))
    assert sorted(p.name.split("-")[0] for p in cache.glob("*.onnx")) == sorted(BUILTIN_MODELS)
    docs = render("soak")
    (master,) = one(docs, "Job", "modelsoak-soak")["spec"]["template"]["spec"]["containers"]
    (run_time,) = [e for e in master["env"] if e["name"] == "LOCUST_RUN_TIME"]
    assert run_time["value"] == "24h"
    run_time["value"] = RUN_TIME
    base = tmp_path_factory.mktemp("cluster")
    image_paths = {"/app": ROOT, "/opt/modelsoak": cache.parent, "/home/modelsoak": base / "home"}
    cluster = LocalCluster(docs, base, image_paths)
    here = SoakHere(cluster, cache, _snapshot(cache))
    try:
        cluster.wait_ready(cluster.start("Deployment", "modelsoak-server"))
        if shutil.which(ENTRYPOINTS["prom/pushgateway"][0]):
            cluster.wait_ready(cluster.start("Deployment", "modelsoak-pushgateway"))
        yield here
    finally:
        cluster.stop_all()


def _run_soak_job(cluster: LocalCluster, tag: str) -> tuple[int, Path, str]:
    """Start the Job's master and its workers (parallelism of them); the master's
    exit code, its results folder, its log."""
    parallelism = one(cluster.docs, "Job", "modelsoak-soak-workers")["spec"]["parallelism"]
    master = cluster.start("Job", "modelsoak-soak", tag)
    workers = [cluster.start("Job", "modelsoak-soak-workers", f"{tag}-{i}") for i in range(parallelism)]
    code = master.procs["master"].wait(timeout=180)
    log = cluster.log(master, "master")
    for w in workers:  # the workers end with the master, so their Job completes
        assert w.procs["worker"].wait(timeout=90) == 0, cluster.log(w, "worker")[-3000:]
    for pod in (master, *workers):
        assert not any(pod.root.iterdir()), (
            f"{pod.name} wrote outside its volumes: {list(pod.root.iterdir())}"
        )
    return code, cluster.claims["modelsoak-results"] / master.name, log


def _pushed(cluster: LocalCluster, run_id: str) -> dict[str, float]:
    assert any(p.name.startswith("modelsoak-pushgateway") for p in cluster.pods), (
        "no Pushgateway pod ran: `make system-deps` installs prometheus-pushgateway"
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.ports[9091]}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("modelsoak_run_") and f'run_id="{run_id}"' in line:
            found[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return found


@pytest.mark.slow
def test_soak_overlay_runs_here_and_passes(soak: SoakHere) -> None:
    soak.cluster.edit_configmap = _plan_editor(NO_LATENCY_SLO)
    code, results, log = _run_soak_job(soak.cluster, "pass")
    assert code == 0, log[-4000:]
    for name in ("summary.json", "report.md", "report.html", "timeseries.jsonl"):
        assert (results / name).is_file(), name
    summary = json.loads((results / "summary.json").read_text())
    assert summary["verdict"] == "PASS" and len(summary["provenance"]["workers"]) == 2
    # the plan came from the ConfigMap, and the server's memory through --server-metrics-url
    assert summary["scenario"] == "soak" and summary["provenance"]["plan"]["soak"]["duration_s"] == 12
    assert summary["memory"]["available"], summary["memory"]
    assert _pushed(soak.cluster, results.name)["modelsoak_run_exit_code"] == 0


@pytest.mark.slow
def test_soak_overlay_with_an_slo_that_cannot_hold_fails(soak: SoakHere) -> None:
    soak.cluster.edit_configmap = _plan_editor({"p99_ms": 0.001})
    code, results, log = _run_soak_job(soak.cluster, "fail")
    assert code == 3, log[-4000:]
    assert json.loads((results / "summary.json").read_text())["verdict"] == "FAIL"
    assert _pushed(soak.cluster, results.name)["modelsoak_run_exit_code"] == 3


@pytest.mark.slow
def test_soak_workers_exit_4_and_say_why_when_the_master_is_killed(soak: SoakHere) -> None:
    """The master's pod dies mid-run: each worker pod stops within the manifest's
    LOCUST_MASTER_TIMEOUT_S, exits 4 (the workers' Job's FailJob rule) and leaves
    the reason in its termination-message file."""
    cluster = soak.cluster
    cluster.edit_configmap = _plan_editor({**NO_LATENCY_SLO, "duration_s": 120})
    parallelism = one(cluster.docs, "Job", "modelsoak-soak-workers")["spec"]["parallelism"]
    master = cluster.start("Job", "modelsoak-soak", "lost")
    workers = [cluster.start("Job", "modelsoak-soak-workers", f"lost-{i}") for i in range(parallelism)]
    series = cluster.claims["modelsoak-results"] / master.name / "timeseries.jsonl"

    def sending() -> bool:
        lines = series.read_text().splitlines() if series.exists() else []
        return any('"count": 0' not in line and '"count"' in line for line in lines)

    deadline = time.monotonic() + 120
    while not sending():
        assert master.procs["master"].poll() is None, cluster.log(master, "master")[-3000:]
        assert time.monotonic() < deadline, "the workers never sent: " + cluster.log(master, "master")[-3000:]
        time.sleep(0.5)  # the interval between two reads of the series, not a wait for it
    master.procs["master"].send_signal(signal.SIGKILL)
    master.procs["master"].wait(30)
    for w in workers:
        code = w.procs["worker"].wait(timeout=60)  # a deadline for the event, not a speed check
        message = cluster.termination_message(w, "worker")
        assert code == 4, cluster.log(w, "worker")[-3000:]
        assert "lost its master: no heartbeat for" in message and "exited 4" in message, message
        assert not any(w.root.iterdir()), f"{w.name} wrote outside its volumes: {list(w.root.iterdir())}"


@pytest.mark.slow
def test_server_pod_drains_on_sigterm_and_never_wrote_its_cache(soak: SoakHere) -> None:
    (pod,) = [p for p in soak.cluster.pods if p.name.startswith("modelsoak-server")]
    (container,) = pod.spec["containers"]
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    pod.procs["server"].send_signal(signal.SIGTERM)
    assert pod.procs["server"].wait(timeout=pod.spec["terminationGracePeriodSeconds"] - pre_stop) == 0
    assert _snapshot(soak.image_cache) == soak.cache_before
    assert not any(pod.root.iterdir()) and not any(soak.cluster.home.iterdir())


@pytest.mark.slow
def test_interactive_locust_runs_here(tmp_path: Path) -> None:
    """The cpu overlay's interactive master (its readiness probe, the web UI and
    /metrics) and a worker that connects to it through the Service name."""
    home = tmp_path / "home"
    cluster = LocalCluster(render("cpu"), tmp_path, {"/app": ROOT, "/home/modelsoak": home})
    try:
        master = cluster.start("Deployment", "modelsoak-locust-master")
        cluster.wait_ready(master, timeout=60)
        worker = cluster.start("Deployment", "modelsoak-locust-worker")
        web = f"http://127.0.0.1:{cluster.ports[8089]}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{web}/stats/requests", timeout=5) as resp:
                if json.load(resp).get("workers"):
                    break
            assert worker.procs["worker"].poll() is None, cluster.log(worker, "worker")[-3000:]
            time.sleep(0.5)  # the interval between two reads of /stats/requests, not a wait for it
        else:
            pytest.fail("the worker did not connect:\n" + cluster.log(worker, "worker")[-3000:])
        with urllib.request.urlopen(f"{web}/metrics", timeout=5) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    finally:
        cluster.stop_all()
    assert not any(master.root.iterdir()) and not any(worker.root.iterdir()) and not any(home.iterdir())
