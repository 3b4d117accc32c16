"""The OpenAI-compatible API of streaming models, under /v1 on the server's HTTP port.

`GET /v1/models`, `POST /v1/completions` and `POST /v1/chat/completions`, with
`stream: true` as server-sent events (chunked transfer encoding, one
`data: {...}` event per token, then `data: [DONE]`). The handler thread of the
connection starts the generation on the server's loop and reads its events
from a queue; the loop never waits on a socket. Errors are OpenAI-shaped:
`{"error": {"message", "type", "param", "code"}}`, with the status from
server/errors.py.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import queue
import ssl
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from server.breakdown import SENT_KEY
from server.errors import InvalidInput, ModelNotFound, ServingError, http_status
from server.generation import (
    Event,
    FinishEvent,
    Generation,
    GenerationEngine,
    GenerationRequest,
    Sink,
    options_from,
)
from server.sse import LoopWriter, Relay

if TYPE_CHECKING:
    from server.core import ServerCore

MAX_BODY_BYTES = 1 << 20
# A generation whose next event takes longer than this is given up (the engine is stuck).
EVENT_TIMEOUT_S = 300.0
CHAT_ROLES = ("system", "developer", "user", "assistant")
_TYPES = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error", 503: "server_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = _TYPES.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _from_serving(exc: ServingError, param: str | None = None) -> ApiError:
    code = "model_not_found" if isinstance(exc, ModelNotFound) else None
    if isinstance(exc, InvalidInput) and param is None:
        # options_from names the option first, in quotes: 'max_tokens' must be ...
        head = exc.message.split("'")
        param = head[1] if exc.message.startswith("'") and len(head) > 2 else None
    return ApiError(http_status(exc), exc.message, param, code)


def chat_prompt(messages: Any) -> bytes:
    """The simple chat template: `<|role|>` lines, then the assistant's turn."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    parts = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
            raise ApiError(400, f"messages[{i}] needs a role, one of {', '.join(CHAT_ROLES)}", "messages")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}]
            content = "".join(
                p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
            )
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", "messages")
        parts.append(f"<|{m['role']}|>\n{content}\n")
    return ("".join(parts) + "<|assistant|>\n").encode()


@dataclass
class _Call:
    chat: bool
    model: str
    body: dict[str, Any]
    id: str
    created: int
    arrived_ns: int


def _parse(body: dict[str, Any], chat: bool, engine: GenerationEngine, arrived_ns: int) -> GenerationRequest:
    if chat:
        prompt = chat_prompt(body.get("messages"))
    else:
        raw = body.get("prompt")
        if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
            raw = raw[0]
        if not isinstance(raw, str):
            raise ApiError(400, "'prompt' must be a string (or a list of one string)", "prompt")
        prompt = raw.encode()
    if body.get("n", 1) != 1:
        raise ApiError(400, f"'n' must be 1 (one choice per request), received {body.get('n')!r}", "n")
    given = {k: body.get(k) for k in ("max_tokens", "temperature", "seed", "stop")}
    if given["max_tokens"] is None and chat:
        given["max_tokens"] = body.get("max_completion_tokens")
    opts = options_from(given, engine.default_max_tokens, engine.max_context)
    return GenerationRequest(prompt, **opts, arrived_ns=arrived_ns)


class OpenAIHandler:
    """Serves one /v1 request on its connection's handler thread."""

    def __init__(self, http: BaseHTTPRequestHandler, core: ServerCore) -> None:
        self.http = http
        self.core = core

    def send_json(self, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        h = self.http
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def get(self, path: str) -> None:
        if path != "/v1/models":
            return self.send_json(404, ApiError(404, f"no route GET {path}; try GET /v1/models").body())
        created = int(self.core.started_at)
        models = [
            {"id": m.info.name, "object": "model", "created": created, "owned_by": "modelsoak"}
            for m in sorted(self.core.registry.loaded(), key=lambda m: m.info.name)
            if m.engine is not None
        ]
        self.send_json(200, {"object": "list", "data": models})

    def post(self, path: str) -> None:
        try:
            if path not in ("/v1/completions", "/v1/chat/completions"):
                raise ApiError(404, f"no route POST {path}; try /v1/completions or /v1/chat/completions")
            # The request's arrival: when its request line was read (server/http.py).
            arrived_ns = getattr(self.http, "read_ns", None) or time.perf_counter_ns()
            call = _Call(path.endswith("chat/completions"), "", self._body(), "", int(time.time()), arrived_ns)
            self._serve(call)
        except ApiError as exc:
            self.send_json(exc.status, exc.body())

    def _body(self) -> dict[str, Any]:
        h = self.http
        try:
            length = int(h.headers.get("Content-Length") or -1)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            h.close_connection = True
            raise ApiError(
                400, f"the request needs a JSON body with a Content-Length of at most {MAX_BODY_BYTES}"
            )
        try:
            body = json.loads(h.rfile.read(length) or b"null")
        except ValueError as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        if not isinstance(body.get("model"), str):
            raise ApiError(400, "'model' must name a served model (GET /v1/models lists them)", "model")
        return body

    def _start(self, call: _Call, events: Sink) -> Generation:
        loop = self.core.loop
        if loop is None:
            raise ApiError(503, "the server is starting")
        name = call.body["model"]

        def parse(engine: GenerationEngine) -> GenerationRequest:
            return _parse(call.body, call.chat, engine, call.arrived_ns)

        future = asyncio.run_coroutine_threadsafe(self.core.plane.generate(name, "", parse, events), loop)
        try:
            model, gen = future.result(timeout=60)
        except ApiError:
            raise
        except ServingError as exc:
            raise _from_serving(exc, "model" if isinstance(exc, ModelNotFound) else None) from None
        call.model = model.info.name
        call.id = ("chatcmpl-" if call.chat else "cmpl-") + uuid.uuid4().hex[:24]
        return gen

    def _serve(self, call: _Call) -> None:
        relay = Relay()
        gen = self._start(call, relay)
        stream = bool(call.body.get("stream"))
        try:
            if stream:
                self._stream(call, gen, relay)
            else:
                self._whole(call, gen, relay.events)
        except OSError:  # the client went away: stop generating for it
            gen.cancel()
            self.http.close_connection = True

    def _next(self, gen: Generation, events: queue.SimpleQueue[Event]) -> Event:
        try:
            return events.get(timeout=EVENT_TIMEOUT_S)
        except queue.Empty:
            gen.cancel()
            raise ApiError(504, f"no token for {EVENT_TIMEOUT_S:g} s; the generation was given up") from None

    def _finish(self, end: FinishEvent) -> None:
        if end.error is not None:
            err = end.error if isinstance(end.error, ServingError) else ServingError(str(end.error))
            raise _from_serving(err)

    def _whole(self, call: _Call, gen: Generation, events: queue.SimpleQueue[Event]) -> None:
        parts = []
        while not isinstance(event := self._next(gen, events), FinishEvent):
            parts.append(event.text)
        self._finish(event)
        text = b"".join(parts).decode(errors="replace")
        reason = "stop" if event.reason == "stop" else "length"
        if call.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
        choice["finish_reason"] = reason
        self.send_json(200, {**self._head(call, "chat.completion" if call.chat else "text_completion"),
                             "choices": [choice], "usage": _usage(event)})  # fmt: skip

    def _head(self, call: _Call, kind: str) -> dict[str, Any]:
        return {"id": call.id, "object": kind, "created": call.created, "model": call.model}

    def _chunk(
        self, call: _Call, text: str | None, reason: str | None, first: bool = False
    ) -> dict[str, Any]:
        kind = "chat.completion.chunk" if call.chat else "text_completion"
        if call.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None}
        choice["finish_reason"] = reason
        return {**self._head(call, kind), "choices": [choice]}

    def _stream(self, call: _Call, gen: Generation, relay: Relay) -> None:
        h = self.http
        fmt = _Events(self, call)
        sock, loop = h.connection, self.core.loop
        if loop is not None and not isinstance(sock, ssl.SSLSocket):
            # Every event, the first included, is written from the loop as it comes:
            # a hop to this thread would delay the first token by a thread's wake-up.
            timeout = sock.gettimeout()
            sock.setblocking(False)
            writer = LoopWriter(loop, sock, _Opening(self, fmt).encode, gen)
            loop.call_soon_threadsafe(relay.to_loop, writer.push)
            if not writer.wait(EVENT_TIMEOUT_S):
                h.close_connection = True
            sock.settimeout(timeout)
            return
        first = self._next(gen, relay.events)  # errors before the first token get a status code
        if isinstance(first, FinishEvent):
            self._finish(first)
        h.wfile.write(self._stream_head() + fmt.opening() + fmt.encode(first))
        h.wfile.flush()
        if isinstance(first, FinishEvent):
            return
        event: Event = first
        while not isinstance(event, FinishEvent):
            event = self._next(gen, relay.events)
            h.wfile.write(fmt.encode(event))
            h.wfile.flush()


    def _response_head(self, status: int, fields: str) -> bytes:
        """A response's status line and headers, as `send_response` writes them (for the loop)."""
        h = self.http
        phrase = h.responses.get(status, ("",))[0]
        return (f"HTTP/1.1 {status} {phrase}\r\nServer: {h.version_string()}\r\n"
                f"Date: {h.date_time_string()}\r\n{fields}\r\n").encode()  # fmt: skip

    def _stream_head(self) -> bytes:
        return self._response_head(
            200, "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
        )

    def error_response(self, exc: ApiError) -> bytes:
        """A whole JSON error response, as `send_json` writes it."""
        body = json.dumps(exc.body()).encode()
        fields = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return self._response_head(exc.status, fields) + body


class _Opening:
    """The encoder a LoopWriter sends a stream with: the first event decides the
    response (a generation that failed before its first token is an error
    response with its status code, as when the thread writes it); then the
    stream's headers and events."""

    def __init__(self, api: OpenAIHandler, fmt: _Events) -> None:
        self.api, self.fmt = api, fmt
        self.started = False

    def encode(self, event: Event) -> bytes:
        if self.started:
            return self.fmt.encode(event)
        self.started = True
        if isinstance(event, FinishEvent) and event.error is not None:
            err = event.error if isinstance(event.error, ServingError) else ServingError(str(event.error))
            return self.api.error_response(_from_serving(err))
        return self.api._stream_head() + self.fmt.opening() + self.fmt.encode(event)


class _Events:
    """A stream's events as chunked SSE bytes: `data: {json}` per text, then the
    finish chunk, the usage chunk (stream_options.include_usage) and [DONE]."""

    def __init__(self, api: OpenAIHandler, call: _Call) -> None:
        self.api, self.call = api, call
        self.stamp = api.core.plane.probes
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def opening(self) -> bytes:
        return _frame(self.api._chunk(self.call, None, None, first=True)) if self.call.chat else b""

    def encode(self, event: Event) -> bytes:
        call = self.call
        if not isinstance(event, FinishEvent):
            text = self.decoder.decode(event.text)
            if not text:
                return b""
            doc = self.api._chunk(call, text, None)
            if self.stamp:
                # The send's time (the chunk is sent as soon as it is made): a client can
                # tell the server's gaps between tokens from the way's (loadtest.streaming).
                doc[SENT_KEY] = time.perf_counter_ns()
            return _frame(doc)
        if event.error is not None:
            out = _frame(_from_serving(ServingError(str(event.error))).body())
        else:
            tail = self.decoder.decode(b"", final=True)
            out = _frame(self.api._chunk(call, tail or None, "stop" if event.reason == "stop" else "length"))
            options = call.body.get("stream_options") or {}
            if isinstance(options, dict) and options.get("include_usage"):
                kind = "chat.completion.chunk" if call.chat else "text_completion"
                out += _frame({**self.api._head(call, kind), "choices": [], "usage": _usage(event)})
        return out + _frame_bytes(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def _frame(doc: dict[str, Any]) -> bytes:
    return _frame_bytes(b"data: " + json.dumps(doc).encode() + b"\n\n")


def _frame_bytes(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _usage(end: FinishEvent) -> dict[str, int]:
    return {
        "prompt_tokens": end.prompt_tokens,
        "completion_tokens": end.completion_tokens,
        "total_tokens": end.prompt_tokens + end.completion_tokens,
    }
