"""`python -m server` / `modelsoak-server`: flags on top of MODELSOAK_SERVER_* settings."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from server.config import ServerSettings

if TYPE_CHECKING:
    from server.app import InferenceServer

log = logging.getLogger("modelsoak.server")


def _param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param {text!r}: expected KEY=VALUE, e.g. sleep_ms=20")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelsoak-server",
        description="gRPC inference server (KServe v2 / Triton extensions / TorchServe API) with "
        "per-request timing and memory probes. Every flag also reads from MODELSOAK_SERVER_<NAME>.",
    )
    a = p.add_argument
    a("--model", help="built-in name, .onnx / TorchScript file, repository dir or config file")
    a("--backend", choices=["onnx", "torch"])
    a("--device", choices=["auto", "cpu", "cuda"])
    a("--host", help="address to bind (default 127.0.0.1)")
    a("--grpc-port", type=int, help="gRPC port, 0 = pick a free one (default 8001)")
    a("--metrics-port", type=int, help="HTTP metrics port, 0 = pick, -1 = off (default 8002)")
    a("--max-batch-size", type=int, help="largest batch formed; 0 = no batching")
    a("--max-queue-delay-us", type=int, help="batcher wait for a batch to fill (default 500)")
    a("--max-queue-size", type=int, help="queued requests per model before RESOURCE_EXHAUSTED")
    a("--instances", type=int, help="model instances per model (default 1)")
    a("--max-message-bytes", type=int, help="largest gRPC message (default 64 MiB)")
    a("--max-concurrent-rpcs", type=int, help="RPCs at once before RESOURCE_EXHAUSTED (0 = no limit)")
    a("--execution", choices=["auto", "inline", "thread"], help="where batches run (default auto)")
    a("--param", type=_param, action="append", metavar="KEY=VALUE", help="model parameter")
    a("--input", action="append", metavar="NAME:DTYPE:DIMS", help="input spec (TorchScript)")
    a("--output", action="append", metavar="NAME:DTYPE:DIMS", help="output spec (TorchScript)")
    a("--no-probes", action="store_true", help="no timing breakdown or statistics")
    a("--memory-interval-s", type=float, help="memory sampling period (default 1 s)")
    a("--leak-warmup-s", type=float, help="leak detector warm-up (default 60 s)")
    a("--profile-requests", type=int, help="profile the first N requests")
    a("--profile-dir", type=Path, help="where profiles go (default ./profiles)")
    a("--grace-s", type=float, help="drain period after SIGTERM (default 30 s)")
    a("--model-control-mode", choices=["none", "explicit"],
      help="none: RepositoryModelLoad/Unload refused (default); explicit: allowed")
    a("--allow-profiling", action="store_true", default=None, help="allow POST/DELETE /profile")
    a("--admin-token-file", type=Path, help="bearer token admin actions must present")
    a("--profile-max-requests", type=int, help="cap on one profile's requests (default 10000)")
    a("--profile-max-s", type=float, help="a profile stops after this long (default 60 s)")
    a("--profile-max-bytes", type=int, help="a profile stops at this RSS growth (default 256 MiB)")
    a("--grpc-max-concurrent-streams", type=int, help="RPCs at once per connection (default 4096)")
    a("--grpc-max-connection-idle-s", type=float, help="close idle connections (default 300 s)")
    a("--grpc-max-connection-age-s", type=float, help="close older connections (default 0 = never)")
    a("--grpc-max-connection-age-grace-s", type=float, help="RPCs' time after max age (default 30 s)")
    a("--grpc-keepalive-min-ping-s", type=float, help="fastest client keepalive allowed (default 10 s)")
    a("--grpc-keepalive-permit-without-calls", action=argparse.BooleanOptionalAction, default=None,
      help="allow keepalive pings without RPCs (default yes)")
    a("--grpc-max-metadata-bytes", type=int, help="largest request metadata (default 16 KiB)")
    a("--cache-dir", type=Path, help="built-in model cache")
    a("--tls-cert", type=Path, help="PEM certificate chain: TLS on the gRPC and metrics ports")
    a("--tls-key", type=Path, help="PEM private key of --tls-cert")
    a("--tls-client-ca", type=Path, help="PEM CA bundle: require client certificates it signed (mTLS)")
    a("--log-level", help="DEBUG, INFO, WARNING ...")
    a("--port-file", type=Path, help="write the bound ports as JSON to this file")
    a("--list-models", action="store_true", help="list the built-in models and exit")
    a("--prepare-only", action="store_true", help="export/cache the model(s), then exit")
    return p


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    given: dict[str, Any] = {}
    for key, value in vars(args).items():
        if value is None or key in ("param", "input", "output", "no_probes", "port_file",
                                    "list_models", "prepare_only"):  # fmt: skip
            continue
        given[key] = value
    if args.param:
        given["params"] = dict(args.param)
    if args.input:
        given["inputs"] = args.input
    if args.output:
        given["outputs"] = args.output
    if args.no_probes:
        given["probes"] = False
    return ServerSettings(**given)


def _list_models() -> int:
    from server.builtin import BUILTIN_MODELS
    from server.builtin_stream import STREAMING_MODELS

    listed: list[tuple[str, str, dict[str, object]]] = [
        (name, m.description, m.defaults) for name, m in BUILTIN_MODELS.items()
    ] + [(name, m.description, m.defaults) for name, m in STREAMING_MODELS.items()]
    for name, description, defaults in listed:
        print(f"{name}\n    {description}\n    params: {defaults}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_models:
        return _list_models()
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"modelsoak-server: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    try:
        return asyncio.run(serve(settings, args))
    except StartupError as exc:
        print(f"modelsoak-server: cannot start: {exc}", file=sys.stderr)
        return 2


class StartupError(Exception):
    pass


async def serve(
    settings: ServerSettings, args: argparse.Namespace, server: InferenceServer | None = None
) -> int:
    """Start `server` (default: the standard one for `settings`), report its ports,
    and run it until SIGTERM or SIGINT."""
    from server.app import InferenceServer, describe_ports
    from server.backends import ModelLoadError
    from server.repository import RepositoryError

    server = server or InferenceServer(settings)
    try:
        if args.prepare_only:
            models = server.core.prepare_all()
            print("prepared: " + ", ".join(m.info.name for m in models))
            return 0
        await server.start()
    except (ModelLoadError, RepositoryError, OSError) as exc:
        raise StartupError(str(exc)) from exc
    print(describe_ports(server), flush=True)
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        ports = {"grpc": server.grpc_port, "metrics": server.metrics_port, "pid": os.getpid()}
        tmp.write_text(json.dumps(ports))
        tmp.replace(args.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig, stop, settings.grace_s)
    await stop.wait()
    await server.stop(close_grpc=False)
    log.info("stopped")
    # Exit here, gRPC server open (see InferenceServer.stop): the connections close
    # with the process, so calls still open end UNAVAILABLE, never CANCELLED.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _on_signal(sig: signal.Signals, stop: asyncio.Event, grace_s: float) -> None:
    log.info("signal %s: draining (grace %.0f s)", sig.name, grace_s)
    stop.set()
