"""The load generator over TLS: `locust -f loadgen/ --host grpcs://...` with a CA,
a client certificate (mTLS) and a server name, for KServe v2 and TorchServe, and
the master's exporter over HTTPS (Locust's own --tls-cert/--tls-key)."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
import trustme

from loadtest.protocols import SetupError, make_channel
from loadtest.tls import ClientTls
from tests.conftest import locust_cmd, run_locust


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    out = {n: tmp_path / f"{n}.pem" for n in ("ca", "cert", "key", "ccert", "ckey")}
    ca.cert_pem.write_to_path(str(out["ca"]))
    server = ca.issue_cert("inference.example")  # not the address dialled: --tls-server-name
    server.private_key_pem.write_to_path(str(out["key"]))
    out["cert"].write_bytes(b"".join(b.bytes() for b in server.cert_chain_pems))
    client = ca.issue_cert("loadgen")
    client.private_key_pem.write_to_path(str(out["ckey"]))
    out["ccert"].write_bytes(b"".join(b.bytes() for b in client.cert_chain_pems))
    return out


def _tls_flags(c: dict[str, Path], client: bool = True) -> list[str]:
    flags = ["--tls-ca", str(c["ca"]), "--tls-server-name", "inference.example"]
    return flags + (["--tls-client-cert", str(c["ccert"]), "--tls-client-key", str(c["ckey"])] if client else [])


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["kserve", "torchserve"])
def test_load_test_over_mtls(start_server, certs: dict[str, Path], tmp_path: Path, protocol: str) -> None:
    server = start_server("--model", "identity", "--tls-cert", str(certs["cert"]), "--tls-key",
                          str(certs["key"]), "--tls-client-ca", str(certs["ca"]))  # fmt: skip
    plan = tmp_path / "plan.yaml"
    plan.write_text("concurrency: {users: 2, requests_per_user: 10}\n")
    host = f"grpcs://127.0.0.1:{server.grpc_port}"
    args = ["--scenario", "concurrency", "--slo-file", str(plan), "--protocol", protocol,
            "--model", "identity", "--input-shape", "4"]  # fmt: skip
    (tmp_path / "ok").mkdir()
    (tmp_path / "nocert").mkdir()
    run = run_locust(None, tmp_path / "ok", *args, *_tls_flags(certs), host=host)
    assert run.returncode == 0, run.output[-3000:]
    phase = run.summary()["phases"][0]
    assert phase["requests"] == 20 and phase["failures"] == 0

    refused = run_locust(None, tmp_path / "nocert", *args, *_tls_flags(certs, client=False), host=host)
    assert refused.returncode != 0
    assert "UNAVAILABLE" in refused.output, refused.output[-3000:]


def test_tls_options_need_grpcs_and_readable_files(certs: dict[str, Path]) -> None:
    tls = ClientTls(ca=str(certs["ca"]), server_name="inference.example")
    with pytest.raises(SetupError, match="the --tls-\\* options need a grpcs://HOST:PORT host"):
        make_channel("grpc://127.0.0.1:1", tls)
    with pytest.raises(SetupError, match=r"--tls-ca /nonexistent\.pem: No such file"):
        make_channel("grpcs://127.0.0.1:1", ClientTls(ca="/nonexistent.pem"))
    with pytest.raises(SetupError, match="--tls-client-cert and --tls-client-key go together"):
        make_channel("grpcs://127.0.0.1:1", ClientTls(cert=str(certs["ccert"])))
    make_channel("grpcs://127.0.0.1:1", tls).close()


@pytest.mark.slow
def test_master_exporter_serves_https(start_server, certs: dict[str, Path], tmp_path: Path) -> None:
    server = start_server("--model", "identity")
    plan = tmp_path / "plan.yaml"
    plan.write_text("latency: {duration_s: 20, users: 1}\n")
    results = tmp_path / "r"
    results.mkdir()
    cmd = locust_cmd(server, results, "--scenario", "latency", "--slo-file", str(plan), "--model", "identity",
                     "--input-shape", "4", "--metrics-port", "0", "--tls-cert", str(certs["cert"]),
                     "--tls-key", str(certs["key"]))  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=results, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # wait on the log line that names the bound port
            seen.append(line)
            found = re.search(r"Prometheus metrics on port (\d+) \(HTTPS\)", line)
            if found:
                break
        else:
            raise AssertionError("no HTTPS exporter line:\n" + "".join(seen[-50:]))
        ctx = ssl.create_default_context(cafile=str(certs["ca"]))
        ctx.check_hostname = False  # dialled by IP; the chain is still verified against the CA
        with urllib.request.urlopen(f"https://127.0.0.1:{found.group(1)}/metrics", context=ctx, timeout=10) as r:
            assert b"modelsoak" in r.read()
    finally:
        proc.terminate()
        proc.wait(60)

