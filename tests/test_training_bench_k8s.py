"""The training overlay (k8s/overlays/training): rendered and validated like the soak
overlay, the indexed Job's rendezvous plumbing checked, and the Job's own command run
here -- two torchrun nodes meeting at a static rendezvous on 127.0.0.1 -- pushing its
summary to a real Pushgateway."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s_support import CR_KINDS, ROOT, monitor_schema, one, render, selects

OVERLAY = "training"


def _job(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    job = one(docs, "Job", "modelsoak-training")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return job, container


def _flags(args: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def test_overlay_renders_and_validates_strictly(tmp_path: Path) -> None:
    docs = render(OVERLAY)
    core = [d for d in docs if d["kind"] not in CR_KINDS]
    path = tmp_path / "training.yaml"
    path.write_text(yaml.safe_dump_all(core))
    exe = Path(sys.executable).parent / "kubernetes-validate"
    for version in ("1.29", ""):
        pin = ["-k", version] if version else []
        proc = subprocess.run(
            [str(exe), "--strict", "--quiet", *pin, str(path)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(d["metadata"].get("namespace") == "modelsoak" for d in docs if d["kind"] != "Namespace")


def test_indexed_job_rendezvous_and_verdict_plumbing() -> None:
    docs = render(OVERLAY)
    job, c = _job(docs)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    flags = _flags(c["args"])
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(flags["nnodes"]), "scale them together"
    assert spec["backoffLimit"] == 0
    (rule,) = spec["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["operator"] == "NotIn"
    assert rule["onExitCodes"]["containerName"] == c["name"]
    # Pod 0's stable name through the headless Service is the rendezvous address;
    # each pod's node rank is its completion index.
    assert flags["master-addr"] == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    assert flags["node-rank"] == "$(NODE_RANK)"
    (rank_env,) = [e for e in c["env"] if e["name"] == "NODE_RANK"]
    index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert rank_env["valueFrom"]["fieldRef"]["fieldPath"] == index
    svc = one(docs, "Service", pod["subdomain"])
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert selects(svc["spec"]["selector"], job["spec"]["template"]["metadata"]["labels"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["rendezvous"] == int(flags["master-port"]) and ports["metrics"] == int(flags["metrics-port"])
    assert c["command"] == ["torchrun"]
    # The summary goes to the Pushgateway's Service, which admits the training pods.
    gw = one(docs, "Service", "modelsoak-pushgateway")
    assert flags["pushgateway"] == f"http://modelsoak-pushgateway:{gw['spec']['ports'][0]['port']}"
    policy = one(docs, "NetworkPolicy", "modelsoak-pushgateway")
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert any(
        selects(peer.get("podSelector", {}).get("matchLabels", {}), labels)
        and "namespaceSelector" not in peer
        for peer in policy["spec"]["ingress"][0]["from"]
    )
    # The pods reach each other (gloo and NCCL open their own ports).
    own = one(docs, "NetworkPolicy", "modelsoak-training")
    assert any("ports" not in r and any(selects(p["podSelector"]["matchLabels"], labels) for p in r["from"])
               for r in own["spec"]["ingress"])  # fmt: skip
    # The plan is mounted where --plan points.
    mount = next(m for m in c["volumeMounts"] if m["name"] == "plan")
    assert flags["plan"].startswith(mount["mountPath"] + "/")
    plan_cm = next(v for v in pod["volumes"] if v["name"] == "plan")["configMap"]["name"]
    cm = one(docs, "ConfigMap", plan_cm)
    assert Path(flags["plan"]).name in cm["data"]


def test_pod_is_locked_down() -> None:
    job, c = _job(render(OVERLAY))
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/tmp", "/results"}
    assert c["resources"]["limits"]["memory"]


def test_pod_monitor_and_training_rules() -> None:
    import jsonschema

    docs = render(OVERLAY)
    mon = one(docs, "PodMonitor", "modelsoak-training")
    jsonschema.validate(mon, monitor_schema("PodMonitor"))
    job, c = _job(docs)
    assert selects(mon["spec"]["selector"]["matchLabels"], job["spec"]["template"]["metadata"]["labels"])
    (ep,) = mon["spec"]["podMetricsEndpoints"]
    assert ep["port"] in {p["name"] for p in c["ports"]}
    assert [r["replacement"] for r in ep["relabelings"] if r["targetLabel"] == "job"] == [
        "modelsoak-training"
    ]
    rule = one(docs, "PrometheusRule", "modelsoak-training-alerts")
    source = yaml.safe_load((ROOT / "exporters" / "rules" / "modelsoak-training-alerts.yml").read_text())
    assert rule["spec"] == source


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _local_args(args: list[str], node: int, port: int, gateway: str, out: Path, plan: Path) -> list[str]:
    """The Job's arguments for pod `node`, with what only a cluster has rewritten (each named here)."""
    rewrite = {
        "node-rank": str(node),  # $(NODE_RANK), which the kubelet expands from the completion index
        "master-addr": "127.0.0.1",  # pod 0's DNS name -> this host
        "master-port": str(port),  # a free port: the nodes share this host
        "pushgateway": gateway,  # the Service -> a local Pushgateway
        "out": str(out),  # the pod's emptyDir -> a temporary folder
        "plan": str(plan),  # the ConfigMap mount -> its rendered content
        "metrics-port": "0",  # one fixed port per pod -> any free port (two nodes share this host)
    }
    out_args = []
    for a in args:
        key = a[2:].split("=", 1)[0] if a.startswith("--") else None
        out_args.append(f"--{key}={rewrite[key]}" if key in rewrite else a)
    return out_args


@pytest.mark.slow
def test_the_jobs_command_runs_here_as_two_nodes_and_pushes_a_pass(tmp_path: Path) -> None:
    from exporters.stack import start_pushgateway

    docs = render(OVERLAY)
    job, c = _job(docs)
    plan_cm = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "plan")
    plan = tmp_path / "training-plan.yaml"
    plan.write_text(next(iter(one(docs, "ConfigMap", plan_cm["configMap"]["name"])["data"].values())))
    gateway = start_pushgateway(tmp_path / "pg", "127.0.0.1:0")
    env = {**os.environ, **{e["name"]: e["value"] for e in c["env"] if "value" in e}, "HOME": str(tmp_path)}
    torchrun = shutil.which(c["command"][0], path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is missing from the environment"
    port = _free_port()
    try:
        nodes = [
            subprocess.Popen(
                [torchrun, *_local_args(c["args"], i, port, gateway.url, tmp_path / "out", plan)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i in range(job["spec"]["completions"])
        ]
        outs = [n.communicate(timeout=280)[0] for n in nodes]
        with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=10) as resp:
            pushed = resp.read().decode()
    finally:
        gateway.stop()
    for node, out in zip(nodes, outs, strict=True):
        assert node.returncode == 0, out[-3000:]  # the Job's pods would complete
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["verdict"] == "PASS"
    assert "min_gpu_utilization" in summary["not_judged"]
    assert (
        'modelsoak_training_run_passed{instance="",job="modelsoak-training",run_id="modelsoak-training"} 1'
        in pushed
    )
