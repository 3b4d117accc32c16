"""Streaming models over KServe v2 gRPC: tritonclient's streaming API, unchanged
(in a subprocess: tests/triton_stream_client.py), against a real server serving
tiny-lm and stream-sleep."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess
from tests.server_support import get_json, streaming_repository

CLIENT = Path(__file__).with_name("triton_stream_client.py")


@pytest.fixture(scope="module")
def server(
    start_module_server: Callable[..., ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    return start_module_server("--model", str(streaming_repository(tmp_path_factory.mktemp("repo"))))


def client(server: ServerProcess, *actions: dict[str, Any]) -> list[Any]:
    out = subprocess.run(
        [sys.executable, str(CLIENT), server.address],
        input=json.dumps(list(actions)), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def stream_with_errors(
    server: ServerProcess, model: str, *requests: dict[str, Any], empty_final: bool = False
) -> tuple[list[Any], list[str]]:
    """Each request's responses (none for a refused one), and the in-band errors."""
    (got,) = client(
        server, {"op": "stream", "model": model, "requests": list(requests), "empty_final": empty_final}
    )
    return list(got["replies"]), list(got["errors"])


def stream(
    server: ServerProcess, model: str, *requests: dict[str, Any], empty_final: bool = False
) -> list[Any]:
    replies, errors = stream_with_errors(server, model, *requests, empty_final=empty_final)
    assert not errors
    return replies


def text(reply: dict[str, Any]) -> str:
    return "".join(t for t in reply["texts"] if t)


def test_config_says_decoupled(server: ServerProcess) -> None:
    lm, identity = client(server, {"op": "config", "model": "tiny-lm"}, {"op": "config", "model": "identity"})
    assert lm["decoupled"] and not identity["decoupled"]
    assert lm["inputs"] == [["text_input", "BYTES"]] and lm["outputs"] == [["text_output", "BYTES"]]


def test_one_response_per_token_the_last_one_final(server: ServerProcess) -> None:
    (reply,) = stream(server, "tiny-lm", {"max_tokens": 12, "seed": 1})
    assert len(reply["texts"]) == 12 and all(t is not None and len(t) == 1 for t in reply["texts"])
    assert [p["triton_final_response"] for p in reply["params"]] == [False] * 11 + [True]
    assert [p["modelsoak_token_index"] for p in reply["params"]] == list(range(12))
    first, last = reply["params"][0], reply["params"][-1]
    assert {"modelsoak_queue_ns", "modelsoak_prefill_ns", "modelsoak_ttft_ns"} <= set(first)
    assert last["modelsoak_completion_tokens"] == 12
    assert last["modelsoak_prompt_tokens"] == len("Hello") + 1  # and the BOS token
    assert last["modelsoak_finish_reason"] == "length"


def test_empty_final_response_when_asked(server: ServerProcess) -> None:
    (reply,) = stream(server, "stream-sleep", {"max_tokens": 5}, empty_final=True)
    assert len(reply["texts"]) == 6 and reply["texts"][-1] is None
    assert [p["triton_final_response"] for p in reply["params"]] == [False] * 5 + [True]
    assert text(reply) == " lorem ipsum dolor sit amet"
    assert reply["params"][-1]["modelsoak_completion_tokens"] == 5


def test_stream_sleep_takes_its_length_from_the_model_parameter(server: ServerProcess) -> None:
    (reply,) = stream(server, "stream-sleep", {})
    assert len(reply["texts"]) == 8


def test_seed_makes_the_text_and_stop_cuts_it(server: ServerProcess) -> None:
    opts = {"max_tokens": 24, "temperature": 1.0}
    a, b, other = stream(server, "tiny-lm", {**opts, "seed": 7}, {**opts, "seed": 7}, {**opts, "seed": 8})
    assert text(a) == text(b) and len(text(a)) == 24
    assert text(other) != text(a)
    stop = text(a)[10:12]
    (cut,) = stream(server, "tiny-lm", {**opts, "seed": 7, "stop": stop})
    assert text(cut) == text(a)[: text(a).find(stop)]
    assert cut["params"][-1]["modelsoak_finish_reason"] == "stop"


def test_concurrent_streams_share_decode_steps(server: ServerProcess) -> None:
    replies = stream(server, "tiny-lm", *({"max_tokens": 60, "seed": i} for i in range(4)))
    assert all(len(r["texts"]) == 60 for r in replies)
    assert max(p["modelsoak_batch_occupancy"] for r in replies for p in r["params"]) > 1
    assert get_json(server.metrics_url + "/stats")["models"]["tiny-lm"]["outcomes"]["OK"] >= 4


def test_unary_infer_returns_the_whole_text(server: ServerProcess) -> None:
    params = {"max_tokens": 9, "seed": 3}
    whole, bad = client(
        server,
        {"op": "infer", "model": "tiny-lm", "prompt": "Hi", "params": params},
        {"op": "infer", "model": "tiny-lm", "prompt": "Hi", "input": "prompt"},
    )
    assert len(whole["text"]) == 9
    assert "text_input" in bad["error"]
    (streamed,) = stream(server, "tiny-lm", {"prompt": "Hi", **params})
    assert text(streamed) == whole["text"]


def test_bad_requests_are_answered_in_band_and_the_stream_goes_on(server: ServerProcess) -> None:
    replies, errors = stream_with_errors(
        server, "tiny-lm", {"max_tokens": 100_000}, {"max_tokens": 510, "prompt": "0123456789"},
        {"temperature": "hot"}, {"max_tokens": 3},
    )  # fmt: skip
    assert len(errors) == 3 and all(e.startswith("INVALID_ARGUMENT") for e in errors)
    assert "'max_tokens' must be an integer from 1 to 512, received 100000" in errors[0]
    assert "context window of 512 tokens" in errors[1]
    assert "'temperature' must be a number" in errors[2]
    assert [len(r["texts"]) for r in replies] == [0, 0, 0, 3]


def test_a_full_queue_refuses_with_resource_exhausted(server: ServerProcess) -> None:
    # One slot and one waiting place: of three long requests at once, one at least is refused.
    replies, errors = stream_with_errors(server, "tiny-lm-1", *({"max_tokens": 200} for _ in range(3)))
    assert errors and all(e.startswith("RESOURCE_EXHAUSTED") and "max_waiting=1" in e for e in errors)
    assert sorted(len(r["texts"]) for r in replies) == [0] * len(errors) + [200] * (3 - len(errors))
    (after,) = stream(server, "tiny-lm-1", {"max_tokens": 2})
    assert len(after["texts"]) == 2


def test_the_kv_budget_makes_the_second_sequence_wait(server: ServerProcess) -> None:
    # 6 + 300 tokens each: two do not fit in 512 tokens of KV cache at once, whatever the slots.
    first, second = stream(server, "tiny-lm-kv", {"max_tokens": 300}, {"max_tokens": 300})
    assert len(first["texts"]) == len(second["texts"]) == 300
    # (On tiny-lm, with no such budget, the same two share steps: the concurrent-streams test.)
    assert {p["modelsoak_batch_occupancy"] for r in (first, second) for p in r["params"]} == {1}


def test_tensor_models_still_answer_on_the_stream(server: ServerProcess) -> None:
    (got,) = client(server, {"op": "tensor_stream"})
    assert got == {"error": "", "output": [[1.0, 1.0, 1.0]]}
