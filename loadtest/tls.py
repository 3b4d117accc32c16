"""TLS for the load generator's gRPC channels (--host grpcs://...) and its exporter.

`--tls-ca` verifies the server (system roots when absent), `--tls-client-cert`
and `--tls-client-key` present a client certificate (mTLS), and `--tls-server-name` names
the host the server's certificate must be for when it differs from the address
dialled (an IP, a port-forward).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


class TlsSetupError(RuntimeError):
    """A TLS file is missing or the options do not fit together."""


@dataclass(frozen=True)
class ClientTls:
    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""

    @property
    def given(self) -> bool:
        return any((self.ca, self.cert, self.key, self.server_name))

    def _read(self, flag: str, path: str) -> bytes | None:
        if not path:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise TlsSetupError(f"{flag} {path}: {exc.strerror}; expected a PEM file") from None

    def credentials(self) -> grpc.ChannelCredentials:
        if bool(self.cert) != bool(self.key):
            raise TlsSetupError(
                "--tls-client-cert and --tls-client-key go together (the client certificate and its key)"
            )
        return grpc.ssl_channel_credentials(
            root_certificates=self._read("--tls-ca", self.ca),
            private_key=self._read("--tls-client-key", self.key),
            certificate_chain=self._read("--tls-client-cert", self.cert),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The same files for an HTTPS client (the OpenAI-compatible protocol)."""
        if bool(self.cert) != bool(self.key):
            raise TlsSetupError(
                "--tls-client-cert and --tls-client-key go together (the client certificate and its key)"
            )
        ctx = ssl.create_default_context(cafile=self.ca or None)
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def exporter_ssl_args(parsed: Any) -> dict[str, str]:
    """gevent WSGIServer keyword arguments for the headless exporter: Locust's own
    --tls-cert/--tls-key (which serve its web UI, /metrics included, over HTTPS)."""
    cert = getattr(parsed, "tls_cert", "") or ""
    key = getattr(parsed, "tls_key", "") or ""
    if not cert and not key:
        return {}
    if not (cert and key):
        raise TlsSetupError("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise TlsSetupError(f"{flag} {path}: no such file; expected a PEM file")
    return {"certfile": cert, "keyfile": key}
