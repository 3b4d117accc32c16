"""The server-side timing breakdown carried in response parameters.

Our server adds these int64 parameters to every ModelInferResponse (and to
TorchServe JSON responses under "parameters") so that a client can join the
server's view of a request to its own latency. Other servers do not send them;
`parse` then returns None and reports say the breakdown is not available.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.stats import PHASES, RequestTiming

PREFIX = "modelsoak_"
# Phase -> parameter name; values are nanoseconds. "total" is "server_total" on the
# wire, so that a client's own total is never mistaken for it.
PHASE_KEYS = {p: PREFIX + ("server_total" if p == "total" else p) + "_ns" for p in PHASES}
_QUEUE, _ASSEMBLY, _H2D, _COMPUTE, _D2H, _TOTAL = PHASE_KEYS.values()
BATCH_SIZE_KEY = PREFIX + "batch_size"
BATCH_REQUESTS_KEY = PREFIX + "batch_requests"
CLOCK_KEY = PREFIX + "clock"


def as_dict(t: RequestTiming) -> dict[str, int | str]:
    """The parameters for one request's timing."""
    out: dict[str, int | str] = {key: t.phase_ns(phase) for phase, key in PHASE_KEYS.items()}
    out[BATCH_SIZE_KEY] = t.batch_size
    out[BATCH_REQUESTS_KEY] = t.batch_requests
    out[CLOCK_KEY] = t.clock
    return out


def fill_parameters(params: Any, t: RequestTiming) -> None:
    """Write the breakdown into a protobuf map<string, InferParameter>."""
    params[_QUEUE].int64_param = t.queue_ns
    params[_ASSEMBLY].int64_param = t.batch_assembly_ns
    params[_H2D].int64_param = t.h2d_ns
    params[_COMPUTE].int64_param = t.compute_ns
    params[_D2H].int64_param = t.d2h_ns
    params[_TOTAL].int64_param = t.total_ns
    params[BATCH_SIZE_KEY].int64_param = t.batch_size
    params[BATCH_REQUESTS_KEY].int64_param = t.batch_requests
    params[CLOCK_KEY].string_param = t.clock


def parse(params: Mapping[str, Any]) -> dict[str, int] | None:
    """Phase -> ns from a response's parameters (protobuf map or JSON dict);
    None when the server sent no breakdown."""
    if _TOTAL not in params:
        return None
    names = _PARSE_NAMES
    if isinstance(params, dict):
        return {name: int(params[key]) for name, key in names if key in params}
    # A protobuf map of InferParameter: read int64_param, without creating
    # entries for absent keys (indexing a message map inserts them).
    return {name: params[key].int64_param for name, key in names if key in params}


_PARSE_NAMES = (
    *PHASE_KEYS.items(),
    ("batch_size", BATCH_SIZE_KEY),
    ("batch_requests", BATCH_REQUESTS_KEY),
)

# Streaming responses (one per token): where the token came from, and on the
# first and final responses the request's own timing and token counts.
TOKEN_INDEX_KEY = PREFIX + "token_index"
# When the server made the token's response, on its monotonic clock (ns): the gaps
# between two tell a client the server's own inter-token latency.
SENT_KEY = PREFIX + "sent_ns"
OCCUPANCY_KEY = PREFIX + "batch_occupancy"
STEP_KEY = PREFIX + "step_ns"
PREFILL_KEY = PREFIX + "prefill_ns"
TTFT_KEY = PREFIX + "ttft_ns"
PROMPT_TOKENS_KEY = PREFIX + "prompt_tokens"
COMPLETION_TOKENS_KEY = PREFIX + "completion_tokens"
FINISH_REASON_KEY = PREFIX + "finish_reason"
QUEUE_KEY = _QUEUE
TOTAL_KEY = _TOTAL
