"""The OpenAI-compatible API under /v1, through the unmodified `openai` client,
against a real server serving tiny-lm and stream-sleep."""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import openai
import pytest

from tests.conftest import ServerProcess
from tests.server_support import streaming_repository


@pytest.fixture(scope="module")
def server(
    start_module_server: Callable[..., ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    return start_module_server("--model", str(streaming_repository(tmp_path_factory.mktemp("repo"))))


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.metrics_url + "/v1", api_key="unused", max_retries=0)


def post(server: ServerProcess, path: str, body: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(server.metrics_url + path, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_models_lists_the_streaming_models(api: openai.OpenAI) -> None:
    assert sorted(m.id for m in api.models.list()) == ["stream-sleep", "tiny-lm", "tiny-lm-1", "tiny-lm-kv"]


def test_completion_counts_its_tokens(api: openai.OpenAI) -> None:
    r = api.completions.create(model="tiny-lm", prompt="Hello there", max_tokens=10, seed=4)
    assert len(r.choices) == 1 and r.choices[0].finish_reason == "length"
    assert len(r.choices[0].text) == 10  # one printable ASCII byte per token
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len("Hello there") + 1, 10)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_completion_is_the_same_text_with_usage_last(api: openai.OpenAI) -> None:
    whole = api.completions.create(model="tiny-lm", prompt="abc", max_tokens=16, seed=9, temperature=0.8)
    chunks = list(
        api.completions.create(
            model="tiny-lm", prompt="abc", max_tokens=16, seed=9, temperature=0.8,
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 16 and chunks[-1].usage.prompt_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_streams_deltas_and_stops_at_a_stop_sequence(api: openai.OpenAI) -> None:
    messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    r = api.chat.completions.create(model="stream-sleep", messages=messages, max_tokens=6)
    assert r.choices[0].message.content == " lorem ipsum dolor sit amet consectetur"
    assert r.choices[0].message.role == "assistant" and r.usage is not None and r.usage.completion_tokens == 6
    chunks = list(
        api.chat.completions.create(model="stream-sleep", messages=messages, stream=True, stop=[" sit"])
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == " lorem ipsum dolor"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_on_tiny_lm_with_seed_is_repeatable(api: openai.OpenAI) -> None:
    def ask() -> str:
        r = api.chat.completions.create(
            model="tiny-lm", messages=[{"role": "user", "content": "Tell me"}], max_tokens=12, seed=5
        )
        return str(r.choices[0].message.content)

    assert ask() == ask()


def test_bad_input_is_a_400_naming_the_parameter(api: openai.OpenAI, server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        api.completions.create(model="tiny-lm", prompt="x", max_tokens=0)
    assert bad.value.body == {
        "message": "'max_tokens' must be an integer from 1 to 512, received 0",
        "type": "invalid_request_error", "param": "max_tokens", "code": None,
    }  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="temperature"):
        api.completions.create(model="tiny-lm", prompt="x", temperature=5)
    with pytest.raises(openai.BadRequestError, match="role"):
        api.chat.completions.create(model="tiny-lm", messages=[{"role": "wizard", "content": "x"}])  # type: ignore[misc, list-item]
    status, doc = post(server, "/v1/completions", b"{not json")
    assert status == 400 and "not valid JSON" in doc["error"]["message"]
    status, doc = post(server, "/v1/completions", json.dumps({"model": "identity", "prompt": "x"}).encode())
    assert status == 400 and "not a streaming model" in doc["error"]["message"]
    # The server keeps serving.
    assert api.completions.create(model="tiny-lm", prompt="x", max_tokens=2).usage is not None


def test_unknown_model_is_a_404(api: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        api.completions.create(model="gpt-nothing", prompt="x")
    assert isinstance(missing.value.body, dict)
    assert missing.value.body["param"] == "model" and "tiny-lm" in missing.value.body["message"]


def test_a_full_queue_is_a_429(api: openai.OpenAI) -> None:
    # One slot and one waiting place (tiny-lm-1): of four long requests at once, some are refused.
    def one(i: int) -> str:
        try:
            api.completions.create(model="tiny-lm-1", prompt="x", max_tokens=200)
        except openai.RateLimitError as exc:
            assert isinstance(exc.body, dict) and exc.body["type"] == "rate_limit_error"
            return str(exc.body["message"])
        return "done"

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    assert "done" in results
    assert any("max_waiting=1" in r for r in results)


def test_many_streams_at_once(api: openai.OpenAI) -> None:
    def one(i: int) -> tuple[int, str | None]:
        chunks = list(api.completions.create(model="stream-sleep", prompt=str(i), max_tokens=8, stream=True))
        return len(chunks), chunks[-1].choices[0].finish_reason

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(64)))
    assert results == [(9, "length")] * 64  # 8 tokens, then the chunk with the finish reason


def test_token_chunks_carry_the_servers_send_time(api: openai.OpenAI) -> None:
    # The unmodified client keeps the extra field; its gaps are stream-sleep's (itl_ms=2).
    chunks = list(api.completions.create(model="stream-sleep", prompt="x", max_tokens=8, stream=True))
    stamps = [(c.model_extra or {}).get("modelsoak_sent_ns") for c in chunks if c.choices and c.choices[0].text]
    assert len(stamps) == 8 and all(isinstance(s, int) for s in stamps), chunks
    stamps_ns = [int(s) for s in stamps if s is not None]
    gaps_ms = sorted((b - a) / 1e6 for a, b in itertools.pairwise(stamps_ns))
    assert all(g > 0 for g in gaps_ms) and 1.0 < gaps_ms[len(gaps_ms) // 2] < 5.0, gaps_ms
    # The chunk that only carries the finish reason has no token, so no stamp.
    assert "modelsoak_sent_ns" not in (chunks[-1].model_extra or {}), chunks[-1]


class _FakeHttp:
    """What an error response built on the loop reads of its connection's handler."""

    responses: ClassVar[dict[int, tuple[str, str]]] = {200: ("OK", ""), 429: ("Too Many Requests", "")}

    def version_string(self) -> str:
        return "modelsoak-test"

    def date_time_string(self) -> str:
        return "Mon, 07 Dec 2026 00:00:00 GMT"


def test_a_stream_failing_before_its_first_token_is_an_error_response() -> None:
    # Written on the loop (server/openai_api.py _Opening): a failure before any token
    # is still a whole HTTP error response with its status code, not a broken stream.
    from server.errors import QueueFull
    from server.generation import FinishEvent, TokenEvent
    from server.openai_api import OpenAIHandler, _Call, _Events, _Opening

    handler = OpenAIHandler(_FakeHttp(), None)  # type: ignore[arg-type]
    call = _Call(False, "m", {"model": "m"}, "cmpl-1", 0, 0)
    handler.core = type("Core", (), {"plane": type("Plane", (), {"probes": False})()})()
    refused = _Opening(handler, _Events(handler, call)).encode(
        FinishEvent("error", 1, 0, 0, 0, 0, 0, QueueFull("queue full"))
    )
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n") and b"Content-Length: %d" % len(body) in head
    assert json.loads(body)["error"]["message"] == "queue full"
    opening = _Opening(handler, _Events(handler, call))
    first = opening.encode(TokenEvent(b" lorem", 0, 1, 0, 0))
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in first
    assert b'"text": " lorem"' in first
    later = opening.encode(TokenEvent(b" ipsum", 1, 1, 0, 0))
    assert b"HTTP/1.1" not in later and b'"text": " ipsum"' in later
