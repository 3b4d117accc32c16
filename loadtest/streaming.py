"""Token-streaming targets: what one streamed request measured, and the two
clients that measure it — the OpenAI-compatible HTTP API (`/v1/completions` and
`/v1/chat/completions` with `stream: true`, as vLLM, TGI, llama.cpp, Ollama and
our server serve it) and KServe v2 `ModelStreamInfer` with Triton's
decoupled-model convention (one response per token, the last one flagged
`triton_final_response`).

Per request: time to first token (TTFT, from the send to the first piece of
text), every inter-token latency (ITL, between pieces of text), time per output
token (TPOT: the decode time over the tokens after the first) and end-to-end
latency (E2E), with the prompt and generated token counts from the server's own
`usage` when it reports it, else counted here (one piece of text per token),
and the result says which.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc

from loadtest.protocols import GrpcError, SetupError, make_channel
from loadtest.tls import ClientTls
from loadtest.workload import Prompt
from server.breakdown import SENT_KEY  # a token's send time: a KServe parameter, an OpenAI chunk's field
from server.proto import grpc_service_pb2 as pb
from server.proto import grpc_service_pb2_grpc as pb_grpc

__all__ = ["KServeStreamClient", "OpenAIClient", "StreamResult"]

# Our server's timing parameters on a stream's responses (first token, final response).
_SERVER_SPLIT = (
    "modelsoak_queue_ns",
    "modelsoak_prefill_ns",
    "modelsoak_ttft_ns",
    "modelsoak_server_total_ns",
)
# An OpenAI-compatible server's HTTP errors as the gRPC status names failures are grouped by.
HTTP_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE",
               504: "DEADLINE_EXCEEDED"}  # fmt: skip
# The token counts' sources, as the summary names them.
FROM_USAGE, COUNTED = "usage", "counted"


@dataclass
class StreamResult:
    """One streamed request as the client saw it (nanoseconds)."""

    ttft_ns: int = 0  # send -> first text; 0: no text came
    itl_ns: list[int] = field(default_factory=list)  # between consecutive pieces of text
    e2e_ns: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    source: str = COUNTED  # where the token counts came from
    size: int = 0  # bytes received
    # What the server said of the request's time where it says it (our server's
    # parameters, ns): waiting for a sequence slot, prefill, arrival to the end.
    server_ns: dict[str, int] = field(default_factory=dict)
    # |client's gap - server's gap| for each gap, where the server stamps its sends.
    itl_added_ns: list[int] = field(default_factory=list)

    @property
    def tpot_ns(self) -> int | None:
        """Decode time per output token after the first (None with fewer than two)."""
        if self.output_tokens < 2 or not self.ttft_ns:
            return None
        return (self.e2e_ns - self.ttft_ns) // (self.output_tokens - 1)


class StreamClock:
    """Marks the pieces of text of one stream as they arrive."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter_ns()
        self.last = 0
        self.result = StreamResult()
        self.pieces = 0
        self.usage: tuple[int, int] | None = None  # (prompt, output) tokens, where the server says
        self.end = 0  # when the stream's end was read, where the reader knows it
        self.last_sent = 0

    def piece(self, at: int = 0, sent: int = 0) -> None:
        """A piece of text arrived (`at`: when its bytes were read, if not now; `sent`:
        when the server says it sent it, on its own clock, 0 where it does not say)."""
        now = at or time.perf_counter_ns()
        if self.pieces == 0:
            self.result.ttft_ns = now - self.t0
        else:
            gap = now - self.last
            self.result.itl_ns.append(gap)
            if sent and self.last_sent:
                # Differences of each side's own clock: no common clock needed.
                self.result.itl_added_ns.append(max(1, abs(gap - (sent - self.last_sent))))
        self.last = now
        self.last_sent = sent
        self.pieces += 1

    def done(self, prompt_tokens: int | None, output_tokens: int | None, at: int = 0) -> StreamResult:
        """The stream ended (`at`: when its end was read, if not now)."""
        r = self.result
        r.e2e_ns = (at or time.perf_counter_ns()) - self.t0
        if output_tokens is not None:
            r.prompt_tokens, r.output_tokens, r.source = prompt_tokens or 0, output_tokens, FROM_USAGE
        else:
            r.output_tokens = self.pieces
        return r


class OpenAIClient:
    """An OpenAI-compatible server over HTTP/1.1, one kept-alive connection per user.
    `host`: http(s)://HOST:PORT (the API is under /v1)."""

    def __init__(
        self, host: str, timeout_s: float, endpoint: str = "completions", tls: ClientTls | None = None
    ) -> None:
        parts = urlsplit(host if "://" in host else f"http://{host}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SetupError(f"--host {host!r}: expected http://HOST:PORT for --protocol openai")
        if endpoint not in ("completions", "chat"):
            raise SetupError(f"--openai-endpoint {endpoint!r}: expected completions or chat")
        self.scheme, self.hostname, self.port = (
            parts.scheme,
            parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
        )
        base = parts.path.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.tls = tls or ClientTls()
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.scheme == "https":
                ctx = self.tls.ssl_context()
                self._conn = http.client.HTTPSConnection(
                    self.hostname, self.port, timeout=self.timeout_s, context=ctx
                )
            else:
                self._conn = http.client.HTTPConnection(self.hostname, self.port, timeout=self.timeout_s)
            self._conn.connect()
            # Small writes go out at once (no Nagle wait for the server's delayed ACK).
            self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._conn

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> http.client.HTTPResponse:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        for attempt in (0, 1):  # a kept-alive connection the server closed is reopened once
            try:
                conn = self._connection()
                conn.request(method, self.base + path, body=data, headers=headers)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt:
                    raise GrpcError("UNAVAILABLE", f"connection reset: {exc}") from None
            except ConnectionRefusedError as exc:
                self.close()
                raise GrpcError("UNAVAILABLE", f"connection refused: {exc}") from None
            except TimeoutError:
                self.close()
                raise GrpcError("DEADLINE_EXCEEDED", f"no answer within {self.timeout_s:g} s") from None
            except OSError as exc:
                self.close()
                raise GrpcError("UNAVAILABLE", f"failed to connect: {exc}") from None
        raise AssertionError("unreachable")

    def models(self) -> list[str]:
        """The server's models (GET /v1/models)."""
        try:
            resp = self._call("GET", "/models", None)
            body = resp.read()
        except GrpcError as exc:
            raise SetupError(f"cannot list the server's models (GET {self.base}/models): {exc}") from None
        if resp.status != 200:
            raise SetupError(f"GET {self.base}/models answered HTTP {resp.status}: {body[:200]!r}")
        try:
            return [str(m["id"]) for m in json.loads(body)["data"]]
        except (ValueError, KeyError, TypeError):
            raise SetupError(
                f"GET {self.base}/models: expected {{'data': [{{'id': ...}}]}}, got {body[:200]!r}"
            ) from None

    def resolve(self, model: str) -> str:
        names = self.models()
        if model:
            if model not in names:
                raise SetupError(f"--model {model!r}: the server serves {', '.join(names) or 'no models'}")
            return model
        if len(names) != 1:
            raise SetupError(
                f"the server serves {len(names)} models ({', '.join(names) or 'none'}); pick one with --model"
            )
        return names[0]

    def body(self, model: str, prompt: Prompt, seed: int) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "model": model,
            "max_tokens": prompt.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.0,
            "seed": seed,
        }
        if self.endpoint == "chat":
            doc["messages"] = prompt.messages or [{"role": "user", "content": prompt.text}]
        else:
            doc["prompt"] = prompt.text
        return doc

    def stream(self, model: str, prompt: Prompt, seed: int) -> StreamResult:
        clock = StreamClock()
        path = "/chat/completions" if self.endpoint == "chat" else "/completions"
        resp = self._call("POST", path, self.body(model, prompt, seed))
        if resp.status != 200:
            text = resp.read()[:500].decode(errors="replace")
            status = HTTP_STATUS.get(resp.status, f"HTTP_{resp.status}")
            raise GrpcError(status, f"HTTP {resp.status}: {text}")
        size = 0
        try:
            while True:
                line = resp.readline()
                if not line:
                    break
                size += len(line)
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event names
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                read_openai_chunk(json.loads(data), clock)
            resp.read()  # the rest of the body, so the connection can be reused
        except TimeoutError:
            self.close()
            raise GrpcError("DEADLINE_EXCEEDED", f"the stream stalled for {self.timeout_s:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise GrpcError("UNAVAILABLE", f"connection reset mid-stream: {exc}") from None
        except ValueError as exc:
            self.close()
            raise GrpcError("INTERNAL", f"not a JSON event in the stream: {exc}") from None
        result = clock.done(*(clock.usage or (None, None)))
        result.size = size
        return result

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def read_openai_chunk(chunk: dict[str, Any], clock: StreamClock, at: int = 0) -> None:
    """One server-sent event of a completion (`text`) or chat (`delta.content`) stream,
    marked on `clock` (read at `at`, if not now); an error in the stream raises GrpcError."""
    if chunk.get("error"):
        raise GrpcError("INTERNAL", f"error in the stream: {chunk['error']}")
    usage = chunk.get("usage")
    if usage:
        clock.usage = (int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
    for c in chunk.get("choices") or ():
        if c.get("text") or (c.get("delta") or {}).get("content"):
            sent = chunk.get(SENT_KEY)
            clock.piece(at, sent if isinstance(sent, int) else 0)
            break


def read_kserve_response(resp: pb.ModelStreamInferResponse, clock: StreamClock) -> bool:
    """One ModelStreamInfer response of the request in flight, marked on `clock`; True when
    it was the last. An in-band error raises GrpcError."""
    if resp.error_message:  # in band, "STATUS: message" (ours and Triton's)
        status, _, detail = resp.error_message.partition(": ")
        if not status.isupper() or " " in status:
            status, detail = "INTERNAL", resp.error_message
        raise GrpcError(status, detail)
    r = resp.infer_response
    clock.result.size += resp.ByteSize()
    if any(len(raw) > 4 for raw in r.raw_output_contents) or any(
        o.contents.bytes_contents and any(o.contents.bytes_contents) for o in r.outputs
    ):
        sent = r.parameters[SENT_KEY].int64_param if SENT_KEY in r.parameters else 0
        clock.piece(0, sent)
    p = r.parameters
    for key in ("completion_tokens", "modelsoak_completion_tokens"):
        if key in p:
            prompt_key = key.replace("completion", "prompt")
            clock.usage = (
                int(p[prompt_key].int64_param) if prompt_key in p else 0,
                int(p[key].int64_param),
            )
    for key in _SERVER_SPLIT:
        if key in p:
            clock.result.server_ns[key] = int(p[key].int64_param)
    return "triton_final_response" in p and p["triton_final_response"].bool_param


class KServeStreamClient:
    """KServe v2 `ModelStreamInfer` against a decoupled model (Triton's vLLM and
    TensorRT-LLM backends, our `tiny-lm` and `stream-sleep`): a BYTES `text_input`
    prompt, `max_tokens` and the rest as request parameters (and as the inputs the
    model declares: `stream`, `sampling_parameters`, `max_tokens`), one response per
    token with `text_output`, the last flagged `triton_final_response`."""

    def __init__(self, host: str, timeout_s: float, tls: ClientTls | None = None) -> None:
        self.channel = make_channel(host, tls)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.timeout_s = timeout_s
        self.inputs: set[str] = set()

    def resolve(self, model: str) -> str:
        try:
            if not model:
                index = self.stub.RepositoryIndex(
                    pb.RepositoryIndexRequest(ready=True), timeout=self.timeout_s
                )
                names = sorted({m.name for m in index.models})
                if len(names) != 1:
                    raise SetupError(
                        f"the server serves {len(names)} models ({', '.join(names) or 'none'}); pick one with --model"
                    )
                model = names[0]
            md = self.stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise SetupError(
                f"cannot read the model's metadata: {exc.code().name}: {exc.details()}"
            ) from None
        self.inputs = {t.name for t in md.inputs}
        if "text_input" not in self.inputs:
            raise SetupError(
                f"model {model!r} has inputs {sorted(self.inputs)}; --protocol kserve-stream expects a "
                "BYTES 'text_input' (a decoupled text-generation model)"
            )
        return model

    def request(self, model: str, prompt: Prompt, seed: int) -> pb.ModelInferRequest:
        req = pb.ModelInferRequest(model_name=model)
        req.parameters["max_tokens"].int64_param = prompt.max_tokens
        req.parameters["seed"].int64_param = seed
        req.parameters["temperature"].double_param = 0.0
        _bytes_input(req, "text_input", prompt.text.encode())
        if "stream" in self.inputs:
            _raw_input(req, "stream", "BOOL", b"\x01")
        if "sampling_parameters" in self.inputs:
            params = {"max_tokens": prompt.max_tokens, "temperature": 0.0, "seed": seed}
            _bytes_input(req, "sampling_parameters", json.dumps(params).encode())
        if "max_tokens" in self.inputs:
            _raw_input(req, "max_tokens", "INT32", prompt.max_tokens.to_bytes(4, "little"))
        return req

    def stream(self, model: str, prompt: Prompt, seed: int) -> StreamResult:
        req = self.request(model, prompt, seed)
        clock = StreamClock()
        # One call per request. (A stream kept per user, as tritonclient's start_stream
        # keeps one, saved nothing measurable on the first token and, with dozens of
        # users' streams open and idle under gevent, stalled the busy ones.)
        try:
            for resp in self.stub.ModelStreamInfer(iter((req,)), timeout=self.timeout_s):
                if read_kserve_response(resp, clock):
                    break
            else:
                if not clock.pieces:
                    raise GrpcError("UNAVAILABLE", "the server ended the stream without a final response")
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            raise GrpcError(
                code.name if code else "UNKNOWN", exc.details() if hasattr(exc, "details") else str(exc)
            ) from None
        return clock.done(*(clock.usage or (None, None)))

    def close(self) -> None:
        self.channel.close()


def _raw_input(req: pb.ModelInferRequest, name: str, datatype: str, raw: bytes) -> None:
    """A one-element input as raw contents (a request's inputs are all raw or all typed)."""
    req.inputs.add(name=name, datatype=datatype, shape=[1])
    req.raw_input_contents.append(raw)


def _bytes_input(req: pb.ModelInferRequest, name: str, value: bytes) -> None:
    """A one-element BYTES input: 4-byte little-endian length, then the bytes."""
    _raw_input(req, name, "BYTES", len(value).to_bytes(4, "little") + value)
