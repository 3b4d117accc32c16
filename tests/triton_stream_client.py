"""tritonclient's streaming API, unchanged, in a process of its own: tritonclient
registers Triton's `inference.*` protobuf messages, which clash with ours in one
process (tests/test_stream_server.py runs this file).

    python tests/triton_stream_client.py ADDRESS < actions.json > results.json

Each action is {"op": "stream", "model", "requests": [params...], "empty_final"},
{"op": "infer", "model", "prompt", "params"}, {"op": "config", "model"} or
{"op": "tensor_stream"}; the results come back in order, as JSON (texts as
latin-1 strings, so any byte survives).
"""

from __future__ import annotations

import json
import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException


def _prompt(text: bytes, name: str = "text_input") -> Any:
    inp = tc.InferInput(name, [1], "BYTES")
    inp.set_data_from_numpy(np.array([text], dtype=object))
    return inp


def _params(resp: Any) -> dict[str, Any]:
    return {k: getattr(v, str(v.WhichOneof("parameter_choice"))) for k, v in resp.parameters.items()}


def stream(client: Any, model: str, requests: list[dict[str, Any]], empty_final: bool) -> dict[str, Any]:
    """Every request on one stream; each one's responses until its final one. An
    in-band error carries no request id, so errors are listed apart."""
    got: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    replies: dict[str, dict[str, Any]] = {str(i): {"texts": [], "params": []} for i in range(len(requests))}
    errors: list[str] = []
    try:
        for i, req in enumerate(requests):
            prompt = req.pop("prompt", "Hello").encode()
            client.async_stream_infer(
                model,
                [_prompt(prompt)],
                request_id=str(i),
                parameters=req,
                enable_empty_final_response=empty_final,
            )
        finished = 0
        while finished + len(errors) < len(requests):
            result, error = got.get(timeout=60)
            if error is not None:
                errors.append(str(error))
                continue
            resp = result.get_response()
            out = result.as_numpy("text_output")
            reply = replies[resp.id]
            reply["texts"].append(None if out is None else out[0].decode("latin-1"))
            reply["params"].append(_params(resp))
            finished += bool(reply["params"][-1]["triton_final_response"])
    finally:
        client.stop_stream()
    return {"replies": [replies[str(i)] for i in range(len(requests))], "errors": errors}


def run(client: Any, action: dict[str, Any]) -> Any:
    op = action["op"]
    if op == "stream":
        return stream(client, action["model"], action["requests"], action.get("empty_final", False))
    if op == "infer":
        try:
            name = action.get("input", "text_input")
            result = client.infer(action["model"], [_prompt(action["prompt"].encode(), name)],
                                  parameters=action.get("params"))  # fmt: skip
        except InferenceServerException as exc:
            return {"error": str(exc)}
        return {"text": result.as_numpy("text_output")[0].decode("latin-1")}
    if op == "config":
        cfg = client.get_model_config(action["model"]).config
        meta = client.get_model_metadata(action["model"])
        return {
            "decoupled": cfg.model_transaction_policy.decoupled,
            "inputs": [[t.name, t.datatype] for t in meta.inputs],
            "outputs": [[t.name, t.datatype] for t in meta.outputs],
        }
    if op == "tensor_stream":
        inp = tc.InferInput("INPUT0", [1, 3], "FP32")
        inp.set_data_from_numpy(np.ones((1, 3), np.float32))
        got: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
        client.start_stream(callback=lambda result, error: got.put((result, error)))
        client.async_stream_infer("identity", [inp])
        result, error = got.get(timeout=30)
        client.stop_stream()
        return {"error": str(error or ""), "output": result.as_numpy("OUTPUT0").tolist() if result else None}
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    client = tc.InferenceServerClient(sys.argv[1])
    actions = json.load(sys.stdin)
    json.dump([run(client, a) for a in actions], sys.stdout)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
