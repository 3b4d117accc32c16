"""TLS and mTLS on the server's gRPC and metrics ports, with real certificates
made at test time (trustme): tritonclient over TLS, plaintext and wrong-CA
clients refused, a rotated certificate served from the next handshake on."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from cryptography import x509

from tests.server_support import wait_until

# tritonclient registers Triton's own `inference.*` protobuf messages, which clash
# with ours in one process: it runs in a subprocess of its own.
TRITON = """
import json, sys
import numpy as np
import tritonclient.grpc as tc
addr, ca, cert, key = sys.argv[1:5]
client = tc.InferenceServerClient(addr, ssl=True, root_certificates=ca, private_key=key or None,
    certificate_chain=cert or None, channel_args=[("grpc.ssl_target_name_override", "localhost")])
x = np.arange(6, dtype=np.float32).reshape(2, 3)
inp = tc.InferInput("INPUT0", [2, 3], "FP32")
inp.set_data_from_numpy(x)
for round in range(int(sys.argv[5])):
    out = client.infer("identity", [inp]).as_numpy("OUTPUT0")
    print(json.dumps({"live": client.is_server_live(), "out": out.tolist()}), flush=True)
    sys.stdin.readline()  # the test rotates the certificate between rounds, on one connection
"""


@dataclass
class Pki:
    ca: trustme.CA
    ca_pem: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path


def _write_pair(cert: trustme.LeafCert, certfile: Path, keyfile: Path) -> None:
    # Replace, as a Secret update does: readers see the old or the new file, never half of one.
    for blob, path in ((cert.cert_chain_pems, certfile), ([cert.private_key_pem], keyfile)):
        tmp = path.with_suffix(".new")
        tmp.write_bytes(b"".join(b.bytes() for b in blob))
        tmp.replace(path)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, rogue = trustme.CA(), trustme.CA()
    p = Pki(ca, tmp_path / "ca.pem", tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "client.crt",
            tmp_path / "client.key", tmp_path / "rogue.crt", tmp_path / "rogue.key")  # fmt: skip
    ca.cert_pem.write_to_path(str(p.ca_pem))
    _write_pair(ca.issue_cert("localhost", "127.0.0.1"), p.cert, p.key)
    _write_pair(ca.issue_cert("loadgen-client"), p.client_cert, p.client_key)
    _write_pair(rogue.issue_cert("loadgen-client"), p.rogue_cert, p.rogue_key)
    return p


def _tls_args(p: Pki, mutual: bool = False) -> list[str]:
    args = ["--model", "identity", "--tls-cert", str(p.cert), "--tls-key", str(p.key)]
    return args + (["--tls-client-ca", str(p.ca_pem)] if mutual else [])


def _served_serial(port: int, p: Pki, client: bool = False, alpn: str = "h2") -> int:
    """The serial of the certificate a fresh TLS connection to `port` is served."""
    ctx = ssl.create_default_context(cafile=str(p.ca_pem))
    ctx.set_alpn_protocols([alpn])
    if client:
        ctx.load_cert_chain(p.client_cert, p.client_key)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def _serial_of(path: Path) -> int:
    return int(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)


def _triton(addr: str, p: Pki, cert: Path | None = None, key: Path | None = None,
            rounds: int = 1) -> subprocess.Popen[str]:  # fmt: skip
    """tritonclient.grpc with ssl=True in its own process; one line of JSON per round."""
    args = [addr, str(p.ca_pem), str(cert or ""), str(key or ""), str(rounds)]
    return subprocess.Popen([sys.executable, "-c", TRITON, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _round(proc: subprocess.Popen[str]) -> None:
    """One round's answer: the server is live and the identity model echoes its input."""
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    doc = json.loads(line)
    assert doc == {"live": True, "out": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]}
    proc.stdin.write("\n")
    proc.stdin.flush()


def _tritonclient_works(addr: str, p: Pki, cert: Path | None = None, key: Path | None = None) -> None:
    proc = _triton(addr, p, cert, key)
    _round(proc)
    assert proc.wait(60) == 0


def _https(url: str, p: Pki, client: bool = False) -> bytes:
    ctx = ssl.create_default_context(cafile=str(p.ca_pem))
    if client:
        ctx.load_cert_chain(p.client_cert, p.client_key)
    with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
        return bytes(resp.read())


def _refused_unavailable(channel: grpc.Channel) -> grpc.RpcError:
    from server.proto import grpc_service_pb2 as pb
    from server.proto import grpc_service_pb2_grpc as pb_grpc

    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    return err.value


def test_tls_serves_tritonclient_and_refuses_plaintext(start_server, pki: Pki) -> None:
    server = start_server(*_tls_args(pki))
    _tritonclient_works(server.address, pki)
    assert "TLS, certificate" in server.log() and "plaintext is refused" in server.log()

    _refused_unavailable(grpc.insecure_channel(server.address))
    # gRPC's own line for the refused plaintext handshake (TLS records expected, HTTP/2 seen).
    wait_until(server.log, lambda t: "Handshake failed" in t and "WRONG_VERSION_NUMBER" in t, 30,
               "gRPC handshake refusal log line")  # fmt: skip

    metrics = f"https://localhost:{server.metrics_port}/metrics"
    assert b"modelsoak" in _https(metrics, pki)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
    wait_until(server.log, lambda t: "plaintext HTTP on the TLS metrics port" in t, 30, "refusal log line")


def test_mtls_requires_a_certificate_from_the_client_ca(start_server, pki: Pki) -> None:
    server = start_server(*_tls_args(pki, mutual=True))
    _tritonclient_works(server.address, pki, pki.client_cert, pki.client_key)

    override = [("grpc.ssl_target_name_override", "localhost")]
    ca = pki.ca_pem.read_bytes()
    no_cert = grpc.ssl_channel_credentials(root_certificates=ca)
    _refused_unavailable(grpc.secure_channel(server.address, no_cert, options=override))
    rogue = grpc.ssl_channel_credentials(ca, pki.rogue_key.read_bytes(), pki.rogue_cert.read_bytes())
    _refused_unavailable(grpc.secure_channel(server.address, rogue, options=override))
    _refused_unavailable(grpc.insecure_channel(server.address))

    metrics = f"https://localhost:{server.metrics_port}/metrics"
    assert b"modelsoak" in _https(metrics, pki, client=True)
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        _https(metrics, pki)
    wait_until(server.log, lambda t: "no valid client certificate on the mTLS" in t, 30, "mTLS refusal log")


@pytest.mark.slow
def test_rotated_certificate_served_without_dropping_connections(start_server, pki: Pki) -> None:
    server = start_server(*_tls_args(pki))
    first = _serial_of(pki.cert)
    assert _served_serial(server.grpc_port, pki) == first
    assert _served_serial(server.metrics_port, pki, alpn="http/1.1") == first
    client = _triton(server.address, pki, rounds=2)
    _round(client)  # its connection must survive both rotations

    # SIGHUP: read at once, logged with the new serial.
    _write_pair(pki.ca.issue_cert("localhost", "127.0.0.1"), pki.cert, pki.key)
    second = _serial_of(pki.cert)
    server.proc.send_signal(signal.SIGHUP)
    wait_until(server.log, lambda t: f"reloaded: serial {second:x}" in t, 30, "reload log line")
    assert _served_serial(server.grpc_port, pki) == second
    assert _served_serial(server.metrics_port, pki, alpn="http/1.1") == second

    # A change of the files alone is picked up at the next handshake.
    _write_pair(pki.ca.issue_cert("localhost", "127.0.0.1"), pki.cert, pki.key)
    third = _serial_of(pki.cert)
    wait_until(lambda: _served_serial(server.grpc_port, pki), lambda s: s == third, 30, "third serial")
    _round(client)
    assert client.wait(60) == 0 and server.proc.poll() is None


def test_bad_tls_files_exit_2(start_server, pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "junk.crt").write_text("not a certificate")
    cases = [
        (["--tls-cert", str(pki.cert)], "needs both --tls-cert and --tls-key"),
        (["--tls-client-ca", str(pki.ca_pem)], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", str(tmp_path / "junk.crt"), "--tls-key", str(pki.key)], "not a PEM certificate"),
        (["--tls-cert", str(pki.cert), "--tls-key", str(pki.client_key)], "do not load"),
        (["--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", str(pki.key)], "missing.crt"),
    ]
    for args, message in cases:
        proc = start_server("--model", "identity", *args, wait=False)
        assert proc.proc.wait(120) == 2, proc.log()
        assert message in proc.log(), (args, proc.log())
