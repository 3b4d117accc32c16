"""The server's HTTP port: Prometheus /metrics, JSON /stats, /profile, /healthz, and
the OpenAI-compatible API of streaming models under /v1 (server/openai_api.py).

A thread per connection: a streaming response holds its thread while it waits
for tokens (which the generation engines make on the server's loop).
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

from prometheus_client.exposition import choose_encoder

from server.admin import PROFILING
from server.errors import ServingError, http_status
from server.metrics import build_registry, stats_document, triton_gpu_text
from server.netutil import PortInUse
from server.openai_api import OpenAIHandler
from server.tls import CertStore, handshake_or_refuse, wrap_accepted

if TYPE_CHECKING:
    from server.core import ServerCore

log = logging.getLogger("modelsoak.http")


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: Prometheus scrapes often
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, doc: Any) -> None:
        self._send(code, json.dumps(doc, indent=2).encode() + b"\n", "application/json")

    def do_GET(self) -> None:
        url = urlparse(self.path)
        core = self.server.core
        if url.path.startswith("/v1/"):
            OpenAIHandler(self, core).get(url.path)
        elif url.path == "/metrics":
            encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
            body = encoder(self.server.registry)
            extra = self.server.extra_text()
            if extra and ctype.startswith("text/plain"):
                body += extra.encode()
            self._send(200, body, ctype)
        elif url.path == "/stats":
            self._json(200, stats_document(core))
        elif url.path == "/profile":
            self._json(200, {"jobs": [j.as_dict() for j in core.profiler.jobs()]})
        elif url.path in ("/healthz", "/readyz"):
            ok = core.ready() if url.path == "/readyz" else True
            self._send(200 if ok else 503, b"ok\n" if ok else b"not ready\n", "text/plain")
        else:
            self._json(
                404, {"error": f"no route {url.path}; try /metrics, /stats, /profile, /healthz, /v1/models"}
            )

    def _discard_body(self) -> None:
        """/profile takes its arguments in the query; a body sent anyway is read
        and dropped (up to 64 KiB, else the connection closes), so it is never
        parsed as the next request on this keep-alive connection."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if 0 <= length <= 65536:
            self.rfile.read(length)
        else:
            self.close_connection = True

    def _admitted(self, action: str) -> bool:
        """Admin actions pass the gate (flag, token); a refusal is answered here."""
        self._discard_body()
        try:
            self.server.core.admin.check(action, self.headers.get("Authorization"), self.address_string())
        except ServingError as exc:
            self._json(http_status(exc), {"error": exc.message})
            return False
        return True

    def do_DELETE(self) -> None:
        url = urlparse(self.path)
        if url.path != "/profile":
            self._json(404, {"error": f"no route DELETE {url.path}; try DELETE /profile?model=NAME"})
            return
        if not self._admitted(PROFILING):
            return
        model = (parse_qs(url.query).get("model") or [""])[0]
        try:
            job = self.server.core.profiler.cancel(model)
        except ServingError as exc:
            self._json(http_status(exc), {"error": exc.message})
            return
        self._json(200, job.as_dict())

    def parse_request(self) -> bool:
        # A request arrives when its request line is read: the OpenAI API counts a
        # generation's time from here, before the body is read and parsed.
        self.read_ns = time.perf_counter_ns()
        return super().parse_request()

    def do_POST(self) -> None:
        url = urlparse(self.path)
        if url.path.startswith("/v1/"):
            OpenAIHandler(self, self.server.core).post(url.path)
            return
        if url.path != "/profile":
            self._json(404, {"error": f"no route POST {url.path}; try POST /profile?model=NAME&requests=N"})
            return
        if not self._admitted(PROFILING):
            return
        query = parse_qs(url.query)
        model = (query.get("model") or [""])[0]
        if not model:
            loaded = self.server.core.model_infos()
            model = loaded[0].name if len(loaded) == 1 else ""
        try:
            requests = int((query.get("requests") or ["100"])[0])
        except ValueError:
            self._json(400, {"error": "requests must be an integer, e.g. /profile?requests=100"})
            return
        if not model:
            self._json(400, {"error": "several models are served; name one with ?model=NAME"})
            return
        try:
            job = self.server.core.profiler.start(model, requests)
        except ServingError as exc:
            self._json(http_status(exc), {"error": exc.message})
            return
        self._json(202, job.as_dict())


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog: hundreds of streaming clients connect at once (the default, 5,
    # would drop their SYNs and retry them a second later).
    request_queue_size = 1024
    core: ServerCore
    registry: Any
    extra_text: Any
    tls: CertStore | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, peer = super().get_request()
        # Streamed tokens are small writes: with Nagle's algorithm on, one written while
        # the client still delays its ACK of the last (a kept-alive connection) waits ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return (wrap_accepted(self.tls, sock) if self.tls else sock), peer

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's thread, not in the accept loop.
        if self.tls is None or handshake_or_refuse(request, client_address, self.tls.mutual):
            super().finish_request(request, client_address)


def start_http(core: ServerCore, host: str, port: int, tls: CertStore | None = None) -> _HTTPServer:
    """Serve the metrics port in a daemon thread (HTTPS with `tls`); returns the bound server."""
    try:
        httpd = _HTTPServer((host, port), _Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port, "metrics") from None
        raise
    httpd.core = core
    httpd.tls = tls
    httpd.registry = build_registry(core)
    httpd.extra_text = lambda: triton_gpu_text(core)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd
