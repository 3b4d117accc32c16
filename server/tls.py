"""TLS and mutual TLS for the gRPC port and the HTTP metrics port.

The certificate files are read again when they change (checked at each new
connection: a stat of three files) or on SIGHUP, so a rotated certificate (a
Kubernetes Secret updated by cert-manager) is served from the next handshake
on; connections already open keep theirs and are never dropped. Files that do
not load (a half-written rotation) leave the current certificate in place.

With a client CA, clients must present a certificate it signed (mTLS): the
handshake fails otherwise, before any RPC or HTTP request is read.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger("modelsoak.tls")


class TlsError(OSError):
    """The TLS files are missing or do not load; a setup error (exit 2)."""


@dataclass(frozen=True)
class TlsMaterial:
    cert: bytes
    key: bytes
    client_ca: bytes | None
    serial: int


def _signature(paths: list[Path]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


def _serial(cert: bytes) -> int:
    from cryptography import x509

    return int(x509.load_pem_x509_certificate(cert).serial_number)


def _context(m: TlsMaterial) -> ssl.SSLContext:
    """A server SSLContext for the material (raises ssl.SSLError when it does not load)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # load_cert_chain reads files only: hand it the bytes through a private temp dir.
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert.write_bytes(m.cert)
        key.write_bytes(m.key)
        os.chmod(key, 0o600)
        ctx.load_cert_chain(cert, key)
    if m.client_ca is not None:
        ctx.load_verify_locations(cadata=m.client_ca.decode())
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class CertStore:
    """The current certificate, key and client CA, reloaded on change or request."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.paths = [cert, key, *([client_ca] if client_ca else [])]
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._lock = threading.Lock()
        self._force = False
        self._sig = _signature(self.paths)
        self.material = self._read()
        self.ssl_context = self._checked_context(self.material)
        self.generation = 0

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def _read(self) -> TlsMaterial:
        try:
            cert, key = self.cert.read_bytes(), self.key.read_bytes()
            ca = self.client_ca.read_bytes() if self.client_ca else None
        except OSError as exc:
            raise TlsError(f"TLS file {exc.filename}: {exc.strerror}") from None
        try:
            serial = _serial(cert)
        except ValueError as exc:
            raise TlsError(f"TLS certificate {self.cert}: not a PEM certificate ({exc})") from None
        return TlsMaterial(cert, key, ca, serial)

    def _checked_context(self, m: TlsMaterial) -> ssl.SSLContext:
        try:
            return _context(m)
        except ssl.SSLError as exc:
            raise TlsError(
                f"TLS files {self.cert} / {self.key}"
                + (f" / {self.client_ca}" if self.client_ca else "")
                + f" do not load: {exc.reason or exc}; expected a PEM certificate chain, its private key"
                " and (for mTLS) a PEM CA bundle"
            ) from None

    def request_reload(self) -> None:
        """SIGHUP: read the files now, whether or not they look changed."""
        with self._lock:
            self._force = True
        self.refresh()

    def refresh(self) -> bool:
        """Reload if the files changed (or a reload was requested); True when reloaded."""
        sig = _signature(self.paths)
        with self._lock:
            if sig == self._sig and not self._force:
                return False
            try:
                material = self._read()
                ctx = self._checked_context(material)
            except TlsError as exc:
                log.warning("TLS files changed but do not load, keeping the current certificate: %s", exc)
                return False
            self._sig, self._force = sig, False
            self.material, self.ssl_context = material, ctx
            self.generation += 1
        log.info("TLS certificate reloaded: serial %x (generation %d)", material.serial, self.generation)
        return True

    # -- gRPC -----------------------------------------------------------------

    def _grpc_config(self, m: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(m.key, m.cert)], root_certificates=m.client_ca)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        served = [self.generation]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # gRPC calls this before each new handshake; None keeps the current config.
            self.refresh()
            if self.generation == served[0]:
                return None
            served[0] = self.generation
            return self._grpc_config(self.material)

        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config(self.material), fetch, require_client_authentication=self.mutual
        )

    def describe(self) -> str:
        mode = "mTLS (client certificates required)" if self.mutual else "TLS"
        return f"{mode}, certificate {self.cert} serial {self.material.serial:x}; plaintext is refused"


def store_from(cert: Path | None, key: Path | None, client_ca: Path | None) -> CertStore | None:
    """The store for the server's --tls-* settings; None without TLS."""
    if cert is None and key is None:
        if client_ca is not None:
            raise TlsError("--tls-client-ca needs --tls-cert and --tls-key (mTLS runs over TLS)")
        return None
    if cert is None or key is None:
        raise TlsError("TLS needs both --tls-cert and --tls-key (PEM files)")
    return CertStore(cert, key, client_ca)


# -- HTTP (the metrics port) -----------------------------------------------------


def wrap_accepted(store: CertStore, sock: socket.socket) -> ssl.SSLSocket:
    """A freshly accepted connection, wrapped with the current certificate; the
    handshake runs in the connection's own thread (handshake_or_refuse)."""
    store.refresh()
    return store.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)


def handshake_or_refuse(sock: ssl.SSLSocket, peer: object, mutual: bool) -> bool:
    """True when the TLS handshake succeeded; otherwise log why the client was refused."""
    sock.settimeout(10.0)
    try:
        sock.do_handshake()
    except ssl.SSLError as exc:
        reason = exc.reason or ""
        if reason in ("HTTP_REQUEST", "WRONG_VERSION_NUMBER", "HTTPS_PROXY_REQUEST"):
            why = "plaintext HTTP on the TLS metrics port (use https://)"
        elif mutual and ("CERTIFICATE" in reason or "ALERT" in reason):
            why = "no valid client certificate on the mTLS metrics port"
        else:
            why = "TLS handshake failed"
        log.warning("metrics port: refused %s: %s (%s)", peer, why, reason or exc)
        return False
    except OSError as exc:
        log.info("metrics port: %s went away during the TLS handshake: %s", peer, exc)
        return False
    sock.settimeout(None)
    return True
