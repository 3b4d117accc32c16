"""gRPC clients for the two target APIs, a channel each, deadlines on every call.

Both return the same thing from `infer`: the response size in bytes and the
server-side breakdown when the server sends one (ours does; Triton, KServe and
TorchServe do not, and the report then says the breakdown is not available).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf import empty_pb2

from loadtest.tls import ClientTls, TlsSetupError
from server import breakdown, dtypes
from server.proto import grpc_service_pb2 as pb
from server.proto import grpc_service_pb2_grpc as pb_grpc
from server.proto import torchserve_pb2 as ts
from server.proto import torchserve_pb2_grpc as ts_grpc

MAX_MESSAGE = 256 * 1024 * 1024


class GrpcError(Exception):
    """A failed call, named by its gRPC status so Locust groups failures by it."""

    def __init__(self, status: str, details: str) -> None:
        super().__init__(f"{status}: {details}")
        self.status = status


# What gRPC says when the target does not take the connection (refused, reset,
# gone): the target is unreachable, not answering with an error.
_UNREACHABLE = ("failed to connect", "connection refused", "connection reset", "socket closed", "connect failed")


# Back-off while the target refuses connections: 50 ms doubling to 2 s, jittered.
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 2.0


def backoff_s(refusals: int) -> float:
    """How long a sender waits after its `refusals`-th refused call in a row (>= 1):
    capped, jittered exponential, so a dead target is not hammered."""
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(refusals - 1, 16)) * random.uniform(0.5, 1.0)


def unreachable(err: GrpcError | None) -> bool:
    """A call that failed because the target could not be reached at all."""
    if err is None or err.status != "UNAVAILABLE":
        return False
    text = str(err).lower()
    return any(s in text for s in _UNREACHABLE)


class SetupError(RuntimeError):
    """The target or the options cannot make a load test (wrong host, unknown model ...)."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # one request's full shape, batch dim included when the model batches


@dataclass(frozen=True)
class Target:
    """What the load test sends: resolved from the options and the server's metadata."""

    model: str
    version: str
    inputs: tuple[InputSpec, ...]
    batchable: bool
    platform: str
    server: str
    server_version: str
    sha256: str
    device: str = ""  # where the server runs the model (ModelConfig), "" when not said
    metrics_url: str = ""  # where the server says its Prometheus metrics are (ours does), else ""


def grpc_target(host: str) -> tuple[str, bool]:
    """'grpc://h:p' / 'grpcs://h:p' / 'h:p' -> ('h:p', tls)."""
    if not host:
        raise SetupError("no host: pass --host grpc://HOST:PORT (e.g. grpc://127.0.0.1:8001)")
    for prefix, tls in (("grpc://", False), ("grpcs://", True), ("http://", False), ("https://", True)):
        if host.startswith(prefix):
            return host[len(prefix) :].rstrip("/"), tls
    if "://" in host:
        raise SetupError(f"--host {host!r}: expected grpc://HOST:PORT or grpcs://HOST:PORT")
    return host.rstrip("/"), False


def make_channel(host: str, tls: ClientTls | None = None) -> grpc.Channel:
    address, secure = grpc_target(host)
    opts: list[tuple[str, Any]] = [("grpc.max_receive_message_length", MAX_MESSAGE),
                                   ("grpc.max_send_message_length", MAX_MESSAGE)]  # fmt: skip
    tls = tls or ClientTls()
    if secure:
        try:
            creds = tls.credentials()
        except TlsSetupError as exc:
            raise SetupError(str(exc)) from None
        return grpc.secure_channel(address, creds, options=opts + tls.channel_options())
    if tls.given:
        raise SetupError(f"--host {host!r}: the --tls-* options need a grpcs://HOST:PORT host")
    return grpc.insecure_channel(address, options=opts)


def _fail(exc: grpc.RpcError) -> GrpcError:
    code = exc.code() if hasattr(exc, "code") else None
    return GrpcError(
        code.name if code is not None else "UNKNOWN",
        (exc.details() or "") if hasattr(exc, "details") else str(exc),
    )


def random_inputs(specs: tuple[InputSpec, ...], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        dt = dtypes.lookup(spec.datatype)
        if dt.name == "BYTES":
            out[spec.name] = np.array([b"modelsoak"] * math.prod(spec.shape), dtype=object).reshape(
                spec.shape
            )
        elif dt.name == "BOOL":
            out[spec.name] = rng.integers(0, 2, spec.shape).astype(bool)
        elif dt.numpy.kind in "iu":
            out[spec.name] = rng.integers(0, 100, spec.shape).astype(dt.numpy)
        else:
            out[spec.name] = rng.standard_normal(spec.shape).astype(np.float32).astype(dt.numpy)
    return out


class KServeClient:
    """KServe v2 / Open Inference Protocol (our server, Triton, KServe, MLServer)."""

    def __init__(self, host: str, timeout_s: float, tls: ClientTls | None = None) -> None:
        self.channel = make_channel(host, tls)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.timeout_s = timeout_s
        self._request: pb.ModelInferRequest | None = None
        self._hostname = grpc_target(host)[0].rsplit(":", 1)[0]

    def resolve(
        self, model: str, version: str, batch: int, dims: tuple[int, ...] | None, datatype: str
    ) -> Target:
        """Read the server's and the model's metadata and decide what to send."""
        try:
            meta = self.stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=self.timeout_s)
            if not model:
                model = self._only_model()
            md = self.stub.ModelMetadata(
                pb.ModelMetadataRequest(name=model, version=version), timeout=self.timeout_s
            )
        except grpc.RpcError as exc:
            raise SetupError(f"cannot read metadata from the server: {_fail(exc)}") from None
        sha, device, metrics = self._config(model, version)
        batchable = bool(md.inputs) and all(t.shape and t.shape[0] == -1 for t in md.inputs)
        inputs = []
        for t in md.inputs:
            sample = list(t.shape[1:] if batchable else t.shape)
            if dims is not None and len(md.inputs) == 1:
                if len(dims) != len(sample) or any(
                    d != -1 and d != g for d, g in zip(sample, dims, strict=True)
                ):
                    given = "x".join(map(str, dims))
                    example = "x".join(str(d) if d > 0 else "4" for d in sample) or "(none)"
                    batch_note = " after its batch dim (--batch-size sets that one)" if batchable else ""
                    raise SetupError(
                        f"--input-shape {given} does not fit input '{t.name}' of shape {list(t.shape)}: "
                        f"expected the {len(sample)} dim(s) of one sample{batch_note}, e.g. --input-shape {example}"
                    )
                sample = list(dims)
            if any(d < 0 for d in sample):
                raise SetupError(
                    f"input '{t.name}' of model '{model}' has variable dims {list(t.shape)}: give --input-shape"
                )
            shape = (batch, *sample) if batchable else tuple(sample)
            inputs.append(InputSpec(t.name, datatype or t.datatype, tuple(shape)))
        if not batchable and batch != 1:
            raise SetupError(
                f"model '{model}' does not batch (its inputs have no -1 batch dim); use --batch-size 1"
            )
        return Target(
            model, version, tuple(inputs), batchable, md.platform, meta.name, meta.version, sha, device, metrics
        )

    def _only_model(self) -> str:
        index = self.stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=self.timeout_s)
        names = sorted({m.name for m in index.models})
        if len(names) != 1:
            raise SetupError(
                f"the server serves {len(names)} models ({', '.join(names) or 'none'}); pick one with --model"
            )
        return names[0]

    def _config(self, model: str, version: str) -> tuple[str, str, str]:
        """The model's sha256, device and the server's metrics URL from Triton's
        ModelConfig: our server puts them in its parameters; Triton says the
        device in instance_group."""
        try:
            cfg = self.stub.ModelConfig(
                pb.ModelConfigRequest(name=model, version=version), timeout=self.timeout_s
            ).config
        except grpc.RpcError:
            return "", "", ""  # servers without Triton's extension
        params = cfg.parameters
        sha = params["sha256"].string_value if "sha256" in params else ""
        device = params["device"].string_value if "device" in params else ""
        if not device and cfg.instance_group:
            device = {1: "gpu", 2: "cpu"}.get(int(cfg.instance_group[0].kind), "")  # KIND_GPU, KIND_CPU
        metrics = ""
        if "metrics_port" in params:
            scheme = params["metrics_scheme"].string_value if "metrics_scheme" in params else "http"
            metrics = f"{scheme}://{self._hostname}:{params['metrics_port'].string_value}"
        return sha, device, metrics

    def prepare(self, target: Target, arrays: dict[str, np.ndarray]) -> None:
        """Build the request once; it is sent unchanged on every call."""
        req = pb.ModelInferRequest(model_name=target.model, model_version=target.version)
        for spec in target.inputs:
            arr = arrays[spec.name]
            req.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(arr.shape))
            dt = dtypes.lookup(spec.datatype)
            raw = _bytes_raw(arr) if dt.name == "BYTES" else np.ascontiguousarray(arr).tobytes()
            req.raw_input_contents.append(raw)
        self._request = req

    def infer(self) -> tuple[int, dict[str, int] | None]:
        try:
            resp = self.stub.ModelInfer(self._request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise _fail(exc) from None
        return resp.ByteSize(), breakdown.parse(resp.parameters)

    def close(self) -> None:
        self.channel.close()


def _bytes_raw(arr: np.ndarray) -> bytes:
    from server.tensors import encode_bytes_elements

    return encode_bytes_elements(arr)


class TorchServeClient:
    """TorchServe's gRPC inference API. The request's `input` map carries a KServe
    v2 JSON body under "data" (what our server and TorchServe's KServe-v2 handlers
    read), or a user's own payload file for a custom handler."""

    def __init__(
        self, host: str, timeout_s: float, payload: bytes | None = None, tls: ClientTls | None = None
    ) -> None:
        self.channel = make_channel(host, tls)
        self.stub = ts_grpc.InferenceAPIsServiceStub(self.channel)
        self.timeout_s = timeout_s
        self.payload = payload
        self._request: ts.PredictionsRequest | None = None

    def ping(self) -> str:
        try:
            return str(self.stub.Ping(empty_pb2.Empty(), timeout=self.timeout_s).health)
        except grpc.RpcError as exc:
            raise SetupError(f"TorchServe Ping failed: {_fail(exc)}") from None

    def prepare(self, target: Target, arrays: dict[str, np.ndarray]) -> None:
        if self.payload is not None:
            body = self.payload
        else:
            doc = {"inputs": [_json_tensor(s, arrays[s.name]) for s in target.inputs]}
            body = json.dumps(doc).encode()
        self._request = ts.PredictionsRequest(
            model_name=target.model, model_version=target.version, input={"data": body}
        )

    def infer(self) -> tuple[int, dict[str, int] | None]:
        try:
            resp = self.stub.Predictions(self._request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise _fail(exc) from None
        parsed = None
        if resp.prediction[:1] == b"{":
            try:
                doc = json.loads(resp.prediction)
                parsed = breakdown.parse(doc.get("parameters") or {}) if isinstance(doc, dict) else None
            except (ValueError, TypeError):
                parsed = None
        return len(resp.prediction), parsed

    def close(self) -> None:
        self.channel.close()


def _json_tensor(spec: InputSpec, arr: np.ndarray) -> dict[str, Any]:
    data: Any = arr.reshape(-1).tolist()
    if arr.dtype == object:
        data = [x.decode() if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
    elif spec.datatype in ("FP16", "BF16"):
        data = arr.astype(np.float32).reshape(-1).tolist()
    return {"name": spec.name, "shape": list(arr.shape), "datatype": spec.datatype, "data": data}
