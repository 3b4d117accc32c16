"""Unary gRPC calls made in C (loadtest/native/h2call.c over libnghttp2), driven
through ctypes.

Why: a grpc.aio call costs the load generator ~0.3 ms of CPU, three times what
Triton's perf_analyzer spends; a generator short of CPU measures itself instead
of the server. Here one C thread makes every slot's calls back to back and
Python wakes once per batch of finished calls (`fileno()` is readable when
results wait), so its cost per call is a few struct unpacks.

A slot is one HTTP/2 connection (one simulated user) with at most one call in
flight: `open` it, `prepare` the request it sends, `run` N calls (0: until
`halt`). `results()` returns what finished since the last call of it.

The library is built on first use (`build()`: gcc and libnghttp2-dev), into
loadtest/native/_build (not versioned).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent / "native"
SOURCE = HERE / "h2call.c"
LIBRARY = HERE / "_build" / "libmsh2.so"
INSTALL_HINT = "install libnghttp2-dev (apt-get install -y libnghttp2-dev) and gcc"

# int32 slot, int32 status, int64 tag, int64 call_ns, int64 done_ns, uint32 details_len, uint32 body_len
RECORD = struct.Struct("<iiqqqII")
# Names as grpc.StatusCode spells them, so results read like grpc.aio's.
STATUS_NAMES: dict[int, str] = {code.value[0]: code.name for code in grpc.StatusCode}
# Room for many small results per read; a bigger one grows the buffer (C says how big).
BUFFER_BYTES = 1 << 20

Result = tuple[int, str, int, int, float, str, bytes]


def build() -> str | None:
    """Compile the library; None when it built, else why not (a line to show)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return f"gcc not found: {INSTALL_HINT}"
    LIBRARY.parent.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed: a process loading the library
    # while another builds it never sees half a file.
    tmp = LIBRARY.with_name(f".{LIBRARY.name}.{os.getpid()}")
    cmd = [gcc, "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-o", str(tmp), str(SOURCE),
           "-lnghttp2", "-lpthread"]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"gcc failed to run: {exc}"
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        out = (proc.stderr or proc.stdout).strip()
        if "nghttp2" in out and ("No such file" in out or "cannot find" in out):
            return f"libnghttp2 headers or library missing: {INSTALL_HINT}"
        return f"building {SOURCE.name} failed: {out[-2000:]}"
    os.replace(tmp, LIBRARY)
    return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    vp, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    sigs: dict[str, tuple[type | None, list[type]]] = {
        "msh2_new": (vp, []),
        "msh2_open": (i32, [vp, i32, ctypes.c_char_p, i32]),
        "msh2_prepare": (i32, [vp, i32, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, i32]),
        "msh2_run": (i32, [vp, i32, i64, i64]),
        "msh2_set_notify_delay": (i32, [vp, i64]),
        "msh2_halt": (i32, [vp, i32]),
        "msh2_close": (i32, [vp, i32]),
        "msh2_fd": (i32, [vp]),
        "msh2_results": (i64, [vp, ctypes.c_void_p, i64]),
        "msh2_free": (None, [vp]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


_loaded: ctypes.CDLL | None = None


def load() -> tuple[ctypes.CDLL | None, str]:
    """The library (built when missing or older than its source), or None and why not."""
    global _loaded
    if _loaded is not None:
        return _loaded, ""
    stale = not LIBRARY.exists() or (SOURCE.exists() and LIBRARY.stat().st_mtime < SOURCE.stat().st_mtime)
    if stale:
        err = build()
        if err is not None:
            return None, err
    try:
        # CDLL (not PyDLL): every call releases the GIL while it runs.
        _loaded = _declare(ctypes.CDLL(str(LIBRARY)))
    except OSError as exc:
        return None, f"cannot load {LIBRARY}: {exc}"
    return _loaded, ""


class NativeError(RuntimeError):
    """The library is missing or refused a command (a bad argument)."""


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise NativeError(f"{what}: {os.strerror(-rc)}")


class NativeCalls:
    """One C worker thread and its slots."""

    def __init__(self, notify_delay_s: float = 0.0) -> None:
        lib, why = load()
        if lib is None:
            raise NativeError(why)
        self._lib = lib
        self._ctx: int | None = lib.msh2_new()
        if not self._ctx:
            raise NativeError("msh2_new failed (out of file descriptors or memory?)")
        self._buf = ctypes.create_string_buffer(BUFFER_BYTES)
        if notify_delay_s > 0:
            self.set_notify_delay(notify_delay_s)

    def _handle(self) -> int:
        if self._ctx is None:
            raise NativeError("used after free()")
        return self._ctx

    def set_notify_delay(self, seconds: float) -> None:
        """Let finished calls wait up to `seconds` before fileno() turns readable, so
        one wake-up of Python takes many (their times are taken when they finish).
        A reader that forwards results in batches anyway (the request engine every
        20 ms) loses nothing and spends far less CPU per call; 0 wakes at once."""
        rc = self._lib.msh2_set_notify_delay(self._handle(), max(0, round(seconds * 1e6)))
        _check(rc, "set_notify_delay")

    def open(self, slot: int, host: str, port: int) -> None:
        """Connects the slot (non-blocking; the host is resolved here, once)."""
        _check(self._lib.msh2_open(self._handle(), slot, host.encode(), port), f"open slot {slot}")

    def prepare(self, slot: int, path: str, msg: bytes, timeout_s: float) -> None:
        """The request the slot sends from its next call on: a method path and a
        serialized message (C adds the gRPC length prefix); timeout_s <= 0: no deadline."""
        timeout_ms = max(0, min(round(timeout_s * 1000), 2**31 - 1)) if timeout_s > 0 else 0
        if timeout_s > 0 and timeout_ms == 0:
            timeout_ms = 1  # a sub-millisecond deadline is still a deadline
        rc = self._lib.msh2_prepare(self._handle(), slot, path.encode(), msg, len(msg), timeout_ms)
        _check(rc, f"prepare slot {slot}")

    def run(self, slot: int, tag: int, count: int) -> None:
        """`count` calls back to back (0: until halted), each result carrying `tag`."""
        _check(self._lib.msh2_run(self._handle(), slot, tag, count), f"run slot {slot}")

    def halt(self, slot: int) -> None:
        """No new call on the slot after the one in flight (whose result still comes)."""
        _check(self._lib.msh2_halt(self._handle(), slot), f"halt slot {slot}")

    def close(self, slot: int) -> None:
        """Drops the slot's connection; a call in flight ends CANCELLED."""
        _check(self._lib.msh2_close(self._handle(), slot), f"close slot {slot}")

    def fileno(self) -> int:
        """Readable while results wait (for loop.add_reader / select)."""
        return int(self._lib.msh2_fd(self._handle()))

    def results(self) -> list[Result]:
        """Every finished call since the last read: (slot, status name, tag, call_ns,
        done_s on time.monotonic()'s clock, details, response message)."""
        ctx = self._handle()
        out: list[Result] = []
        unpack = RECORD.unpack_from
        head = RECORD.size
        while True:
            n = self._lib.msh2_results(ctx, self._buf, len(self._buf))
            if n == 0:
                return out
            if n < 0:  # one record larger than the buffer: make room for it
                self._buf = ctypes.create_string_buffer(-n)
                continue
            data = ctypes.string_at(self._buf, n)  # only the bytes written, not the whole buffer
            at = 0
            while at < n:
                slot, status, tag, call_ns, done_ns, dlen, blen = unpack(data, at)
                at += head
                details = data[at : at + dlen].decode("utf-8", "replace") if dlen else ""
                at += dlen
                body = data[at : at + blen]
                at += blen
                name = STATUS_NAMES.get(status, "UNKNOWN")
                out.append((slot, name, tag, call_ns, done_ns / 1e9, details, body))

    def free(self) -> None:
        """Stops the worker and closes every connection; results not read are lost."""
        if self._ctx is not None:
            self._lib.msh2_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> NativeCalls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()
