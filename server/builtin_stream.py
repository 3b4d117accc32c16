"""The built-in streaming models: `stream-sleep` and `tiny-lm`.

Configured like the tensor built-ins (`--param KEY=VALUE`, or `params:` in a
repository file), checked by the same rules (server.builtin.resolve_params).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from server.builtin import Param, resolve_params, with_seed
from server.generation import GenerationEngine


@dataclass(frozen=True)
class StreamingBuiltin:
    name: str
    description: str
    params: dict[str, Param]
    make: Callable[[str, dict[str, Any]], GenerationEngine]

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        return resolve_params(self.name, self.params, given)

    @property
    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}

    def engine(self, served_name: str, given: Mapping[str, Any]) -> GenerationEngine:
        return self.make(served_name, self.resolve(given))


def _stream_sleep(name: str, p: dict[str, Any]) -> GenerationEngine:
    from server.stream_sleep import StreamSleepEngine

    return StreamSleepEngine(name, p["ttft_ms"], p["itl_ms"], p["max_tokens"], p["max_waiting"])


def _tiny_lm(name: str, p: dict[str, Any]) -> GenerationEngine:
    from server.tinylm import TinyLM
    from server.tinylm_engine import TinyLMEngine

    model = with_seed(7, lambda: TinyLM(p["dim"], p["layers"], p["heads"], p["context"]))
    assert isinstance(model, TinyLM)
    model.eval()
    kv = p["max_kv_tokens"] or p["max_sequences"] * p["context"]
    if kv < p["context"]:
        from server.backends.base import ModelLoadError

        raise ModelLoadError(
            f"built-in model 'tiny-lm': max_kv_tokens={kv} is below the context window "
            f"({p['context']}); a request of full length could never be admitted"
        )
    return TinyLMEngine(
        name, model, p["max_tokens"], p["max_sequences"], kv, p["max_waiting"], p["threads"] or None
    )


_COMMON = {
    "max_tokens": Param(16, "tokens generated when the request sets no max_tokens"),
    "max_waiting": Param(
        1024, "requests that may wait for a sequence slot; more get RESOURCE_EXHAUSTED / 429"
    ),
}

STREAMING_MODELS: dict[str, StreamingBuiltin] = {
    m.name: m
    for m in (
        StreamingBuiltin(
            "stream-sleep",
            "A token stream with known timing and no model: the first token ttft_ms after the "
            "request arrived, then one every itl_ms (absolute deadlines, one timer thread for "
            "every stream), until max_tokens or a stop sequence. For calibrating streaming "
            "load generators: TTFT, inter-token latency, tokens per second.",
            {
                "ttft_ms": Param(20.0, "milliseconds to the first token (the prefill)"),
                "itl_ms": Param(10.0, "milliseconds between tokens"),
                **_COMMON,
            },
            _stream_sleep,
        ),
        StreamingBuiltin(
            "tiny-lm",
            "A small decoder-only transformer (fixed-seed weights, byte-level tokenizer, KV "
            "cache) whose decode steps are batched continuously: a request joins the running "
            "batch at the next step and leaves it when done, up to max_sequences at once and "
            "max_kv_tokens of cache. Emits printable ASCII.",
            {
                "dim": Param(128, "model width"),
                "layers": Param(4, "transformer blocks"),
                "heads": Param(4, "attention heads"),
                "context": Param(512, "context window in tokens (prompt + generated)"),
                "max_sequences": Param(8, "sequences decoded together at most"),
                "max_kv_tokens": Param(0, "KV-cache budget in tokens; 0: max_sequences x context"),
                "threads": Param(0, "torch threads for the generation loop; 0: torch's default"),
                **_COMMON,
            },
            _tiny_lm,
        ),
    )
}
