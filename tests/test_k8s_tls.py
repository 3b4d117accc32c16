"""The optional TLS component (k8s/components/tls): rendered on top of the base,
validated strictly, pods still locked down with the certificates mounted, probes
that a TLS server answers (tried here against a real server, as the kubelet
does them: HTTPS, no certificate verification), and the load generator
pointed at grpcs:// with the CA."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from tests.k8s_support import K8S, env_of, kubectl, monitor_schema, one, pod_templates

CERT_MANAGER = ("Certificate", "Issuer")


def render_with_tls(tmp_path: Path, components: tuple[str, ...] = ("tls",)) -> list[dict[str, Any]]:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    rel = os.path.relpath(K8S, overlay)  # kustomize refuses absolute paths
    listed = "".join(f"  - {rel}/components/{c}\n" for c in components)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: modelsoak\n"
        f"resources:\n  - {rel}/base\ncomponents:\n{listed}"
    )
    proc = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture
def docs(tmp_path: Path) -> list[dict[str, Any]]:
    return render_with_tls(tmp_path)


def test_tls_component_validates_strictly(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    core = [d for d in docs if d["kind"] not in CERT_MANAGER]
    path = tmp_path / "tls.yaml"
    path.write_text(yaml.safe_dump_all(core))
    exe = Path(sys.executable).parent / "kubernetes-validate"
    proc = subprocess.run([str(exe), "--strict", "--quiet", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    cert = one(docs, "Certificate", "modelsoak-server-tls")
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert "modelsoak-server" in cert["spec"]["dnsNames"]  # the name the load generator dials
    issuer = one(docs, "Issuer", cert["spec"]["issuerRef"]["name"])
    ca = one(docs, "Certificate", issuer["spec"]["ca"]["secretName"])
    assert ca["spec"]["isCA"] is True
    one(docs, "Issuer", ca["spec"]["issuerRef"]["name"])
    assert all(d["metadata"].get("namespace") == "modelsoak" for d in docs if d["kind"] != "Namespace")


def _mounts(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in c.get("volumeMounts", [])}


def test_server_mounts_the_secret_and_stays_locked_down(docs: list[dict[str, Any]]) -> None:
    server = one(docs, "Deployment", "modelsoak-server")
    spec = server["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    env = env_of(c)
    assert (env["MODELSOAK_SERVER_TLS_CERT"], env["MODELSOAK_SERVER_TLS_KEY"]) == ("/tls/tls.crt", "/tls/tls.key")
    tls = _mounts(c)["/tls"]
    assert tls["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == tls["name"])
    assert volume["secret"]["secretName"] == one(docs, "Certificate", "modelsoak-server-tls")["spec"]["secretName"]
    assert "subPath" not in tls, "a subPath mount never sees a renewed Secret"
    for owner, tpl in pod_templates(docs):
        sc, where = tpl["spec"]["securityContext"], owner["metadata"]["name"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, where
        for ctr in tpl["spec"]["containers"]:
            csc = ctr["securityContext"]
            assert csc["readOnlyRootFilesystem"] is True and csc["capabilities"] == {"drop": ["ALL"]}, where
            assert csc["allowPrivilegeEscalation"] is False, where
    # fsGroup makes the 0440 key readable by the non-root server, and no one else.
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    assert volume["secret"]["defaultMode"] == 0o440


def test_load_generators_dial_grpcs_with_the_ca(docs: list[dict[str, Any]]) -> None:
    for kind, name in (("Job", "modelsoak-soak"), ("Deployment", "modelsoak-locust-master")):
        spec = one(docs, kind, name)["spec"]["template"]["spec"]
        master = next(c for c in spec["containers"] if c["name"] == "master")
        env = env_of(master)
        assert env["LOCUST_HOST"] == "grpcs://modelsoak-server:8001", name
        assert env["LOCUST_SERVER_METRICS_URL"].startswith("https://"), name
        assert env["LOCUST_TLS_CA"].startswith(_mounts(master)["/tls"]["mountPath"]), name
        volume = next(v for v in spec["volumes"] if v["name"] == _mounts(master)["/tls"]["name"])
        assert [i["key"] for i in volume["secret"]["items"]] == ["ca.crt"], "only the CA, never the key"


def test_workers_have_the_ca_at_the_path_the_master_hands_them(docs: list[dict[str, Any]]) -> None:
    # Locust's master sends its parsed options (--tls-ca among them) to every
    # worker, and the workers open the same path: each worker pod needs the file.
    for (master_kind, master_name), (kind, name) in (
        (("Job", "modelsoak-soak"), ("Job", "modelsoak-soak-workers")),
        (("Deployment", "modelsoak-locust-master"), ("Deployment", "modelsoak-locust-worker")),
    ):
        master_spec = one(docs, master_kind, master_name)["spec"]["template"]["spec"]
        master = next(c for c in master_spec["containers"] if c["name"] == "master")
        ca_path = env_of(master)["LOCUST_TLS_CA"]
        spec = one(docs, kind, name)["spec"]["template"]["spec"]
        worker = spec["containers"][0]
        mount = next(m for m in worker["volumeMounts"] if ca_path.startswith(m["mountPath"] + "/"))
        assert mount.get("readOnly") is True, name
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == "modelsoak-server-tls", name
        assert [i["path"] for i in volume["secret"]["items"]] == [ca_path[len(mount["mountPath"]) + 1 :]], name
        assert [i["key"] for i in volume["secret"]["items"]] == ["ca.crt"], "only the CA, never the key"


def test_probes_are_https_gets_a_tls_server_answers(docs: list[dict[str, Any]], start_server, tmp_path: Path) -> None:
    (c,) = one(docs, "Deployment", "modelsoak-server")["spec"]["template"]["spec"]["containers"]
    ca = trustme.CA()
    leaf = ca.issue_cert("modelsoak-server")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    server = start_server("--model", "identity", env={"MODELSOAK_SERVER_TLS_CERT": str(cert),
                                                      "MODELSOAK_SERVER_TLS_KEY": str(key)})  # fmt: skip
    kubelet = ssl.create_default_context()
    kubelet.check_hostname = False
    kubelet.verify_mode = ssl.CERT_NONE  # what the kubelet does for an HTTPS probe
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["scheme"] == "HTTPS" and get["port"] == 8002 and "grpc" not in c[probe], probe
        url = f"https://127.0.0.1:{server.metrics_port}{get['path']}"
        with urllib.request.urlopen(url, context=kubelet, timeout=10) as resp:
            assert resp.status == 200, (probe, url)


def test_prometheus_scrapes_the_tls_server_over_https_with_the_ca(tmp_path: Path) -> None:
    import jsonschema

    docs = render_with_tls(tmp_path, ("monitoring", "tls"))
    mon = one(docs, "ServiceMonitor", "modelsoak-server")
    jsonschema.validate(mon, monitor_schema("ServiceMonitor"))
    (endpoint,) = mon["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": "modelsoak-server-tls", "key": "ca.crt"}
    cert = one(docs, "Certificate", "modelsoak-server-tls")
    assert endpoint["tlsConfig"]["serverName"] in cert["spec"]["dnsNames"]
    # the Pushgateway is not behind TLS: its monitor keeps plain HTTP
    assert "scheme" not in one(docs, "ServiceMonitor", "modelsoak-pushgateway")["spec"]["endpoints"][0]
