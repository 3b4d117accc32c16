"""Ports: a free one for tests and benchmarks, and whether a port is taken.

The one home of these helpers: tests, benchmarks and the server import them
from here rather than keeping their own copies.
"""

from __future__ import annotations

import errno
import socket


class PortInUse(OSError):
    """Another process listens on the port this server was asked to bind."""

    def __init__(self, host: str, port: int, what: str = "") -> None:
        label = f"{what} " if what else ""
        super().__init__(errno.EADDRINUSE, f"{label}port {port} on {host} is already in use")
        self.host = host
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


def _family(host: str) -> socket.AddressFamily:
    try:
        info = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return socket.AF_INET
    return info[0][0] if info else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on at this moment (the OS's pick for port 0)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """True when a socket listens on `port` of `host` (port 0 is never in use).

    SO_REUSEADDR as gRPC and http.server set it: connections lingering in
    TIME_WAIT do not count, only a listener does."""
    if port == 0:
        return False
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False


def check_free(host: str, port: int, what: str) -> None:
    """Raise PortInUse naming the port, unless it is free (or 0)."""
    if port_in_use(host, port):
        raise PortInUse(host, port, what)
