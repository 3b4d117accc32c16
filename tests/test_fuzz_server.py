"""Property-based fuzzing of a real server process: KServe ModelInfer and ModelStreamInfer,
TorchServe Predictions and the HTTP port (its /profile with profiling on, too), with
arbitrary names, shapes, datatypes, sizes, parameters and byte strings.

What is accepted: every request gets an answer with a status, and the status is one a
client can act on: OK, or a refusal that names the request's fault or the server's state
(INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED for a message over the size limit,
FAILED_PRECONDITION / UNAUTHENTICATED for admin calls, UNIMPLEMENTED for what the server
does not offer). Never UNKNOWN (an exception escaped a handler), INTERNAL (the model or the
server broke on input that should have been refused), a timeout (a hang) or a lost
connection; on HTTP never a 5xx but 501 (a method http.server does not offer). The server
process stays up, and its RSS stays within a bound over the whole run.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from urllib.parse import urlencode

import grpc
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.proto import grpc_service_pb2 as pb
from server.proto import torchserve_pb2 as ts
from server.proto import torchserve_pb2_grpc as ts_grpc
from tests.conftest import ServerProcess
from tests.server_support import get_json, model_stats

ACCEPTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
}
ACCEPTED_NAMES = {c.name for c in ACCEPTED}
MiB = 1024 * 1024
# Over all the examples: the server holds nothing per request once answered, so what it may
# grow is allocator and gRPC buffer slack. A leak of even 1 KiB per request (~2,000 requests)
# stays under it; a request that allocated what its shape claims (2**40 elements) would not.
RSS_BOUND = 128 * MiB
# No example database shared between runs: a failure prints its example and the seed to
# reproduce it with.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES", "BF16"]  # fmt: skip
MODELS = ["identity", "words", "mlp"]
NAMES = ["INPUT0", "OUTPUT0"]

text = st.text(max_size=40)
dims = st.one_of(st.integers(-3, 8), st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**31, 2**40]))
parameter = st.one_of(
    st.builds(pb.InferParameter, bool_param=st.booleans()),
    st.builds(pb.InferParameter, int64_param=st.integers(-(2**63), 2**63 - 1)),
    st.builds(pb.InferParameter, string_param=text),
    st.builds(pb.InferParameter, double_param=st.floats(allow_nan=True)),
    st.builds(pb.InferParameter, uint64_param=st.integers(0, 2**64 - 1)),
)
parameters = st.dictionaries(st.one_of(text, st.sampled_from(["sequence_id", "binary_data", "timeout"])),
                             parameter, max_size=3)  # fmt: skip
contents = st.builds(
    pb.InferTensorContents,
    bool_contents=st.lists(st.booleans(), max_size=8),
    int_contents=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8),
    int64_contents=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8),
    uint_contents=st.lists(st.integers(0, 2**32 - 1), max_size=8),
    fp32_contents=st.lists(st.floats(width=32), max_size=8),
    fp64_contents=st.lists(st.floats(), max_size=8),
    bytes_contents=st.lists(st.binary(max_size=16), max_size=8),
)
tensor = st.builds(
    pb.ModelInferRequest.InferInputTensor,
    name=st.one_of(st.sampled_from(NAMES), text),
    datatype=st.one_of(st.sampled_from(DATATYPES), text),
    shape=st.lists(dims, max_size=5),
    parameters=parameters,
    contents=st.one_of(st.none(), contents),
)
requested = st.builds(
    pb.ModelInferRequest.InferRequestedOutputTensor,
    name=st.one_of(st.sampled_from(NAMES), text),
    parameters=parameters,
)
infer_request = st.builds(
    pb.ModelInferRequest,
    model_name=st.one_of(st.sampled_from(MODELS), text),
    model_version=st.one_of(st.just(""), st.sampled_from(["1", "0", "-1"]), text),
    id=text,
    parameters=parameters,
    inputs=st.lists(tensor, max_size=3),
    outputs=st.lists(requested, max_size=2),
    raw_input_contents=st.lists(
        st.one_of(st.binary(max_size=64), st.binary(min_size=1000, max_size=5000)), max_size=3
    ),
)


def _near_valid(batch: int, width: int, datatype: str, slack: int, version: str) -> pb.ModelInferRequest:
    """A request for `identity` that is right, or off by a little (width, datatype, byte count)."""
    req = pb.ModelInferRequest(model_name="identity", model_version=version)
    req.inputs.add(name="INPUT0", datatype=datatype, shape=[batch, width])
    req.raw_input_contents.append(b"\x01" * max(0, batch * width * 4 + slack))
    return req


near_valid = st.builds(
    _near_valid, st.integers(0, 64), st.sampled_from([4, 4, 4, 3, 0]),
    st.sampled_from(["FP32", "FP32", "INT32", "FP16"]), st.sampled_from([0, 0, 0, -1, 1, 4]),
    st.sampled_from(["", "1", "2"]),
)  # fmt: skip
any_infer_request = st.one_of(infer_request, near_valid)


@pytest.fixture(scope="module")
def fuzzed(start_module_server: Callable[..., ServerProcess], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:  # fmt: skip
    cfg = tmp_path_factory.mktemp("fuzz") / "models.yaml"
    cfg.write_text(
        "models:\n"
        "  - {name: identity, source: identity}\n"
        "  - {name: words, source: identity, params: {datatype: BYTES}}\n"
        "  - {name: mlp, source: mlp}\n"
    )
    # Profiling on (bounded to 1 s a job), so the fuzz reaches /profile's own parsing too.
    srv = start_module_server("--model", str(cfg), "--max-message-bytes", str(1 << 20), "--allow-profiling",
                              "--profile-max-s", "1", "--profile-dir", str(cfg.parent / "profiles"))  # fmt: skip
    rss = psutil.Process(srv.proc.pid)
    before = rss.memory_info().rss
    yield srv
    assert srv.proc.poll() is None, f"the server died under fuzzing:\n{srv.log()[-4000:]}"
    grown = rss.memory_info().rss - before
    outcomes = model_stats(srv.metrics_url, "identity")["outcomes"]
    jobs = len(get_json(srv.metrics_url + "/profile")["jobs"])
    print(f"fuzzing: server RSS +{grown / MiB:.1f} MiB over the run; identity's outcomes {outcomes}; "
          f"{jobs} profiles started")  # fmt: skip
    # The fuzz reached the model, both ways: answered and refused by validation.
    assert outcomes.get("OK", 0) > 0 and outcomes.get("INVALID_ARGUMENT", 0) > 0, outcomes
    assert grown < RSS_BOUND, f"server RSS grew {grown / MiB:.1f} MiB under fuzzing"


def _check(code: grpc.StatusCode, details: str, what: object) -> None:
    assert code in ACCEPTED, f"{code.name} ({details!r}) for {what}"
    if code != grpc.StatusCode.OK:
        assert details, f"{code.name} without a message for {what}"


@settings(FUZZ, max_examples=300)
@given(request=any_infer_request)
def test_model_infer_answers_every_request(fuzzed: ServerProcess, request: pb.ModelInferRequest) -> None:
    try:
        fuzzed.stub().ModelInfer(request, timeout=20)
    except grpc.RpcError as exc:
        _check(exc.code(), exc.details() or "", request)


@settings(FUZZ, max_examples=80)
@given(requests=st.lists(any_infer_request, min_size=1, max_size=4))
def test_model_stream_infer_answers_every_message(
    fuzzed: ServerProcess, requests: list[pb.ModelInferRequest]
) -> None:
    answers = 0
    try:
        for resp in fuzzed.stub().ModelStreamInfer(iter(requests), timeout=20):
            answers += 1
            if resp.error_message:
                status = resp.error_message.split(":", 1)[0]
                assert status in ACCEPTED_NAMES, f"in-band {resp.error_message!r}"
    except grpc.RpcError as exc:  # the stream itself: only a message over the size limit
        _check(exc.code(), exc.details() or "", requests)
        return
    assert answers == len(requests), f"{answers} answers to {len(requests)} messages"


ts_request = st.builds(
    ts.PredictionsRequest,
    model_name=st.one_of(st.sampled_from(MODELS), text),
    model_version=st.one_of(st.just(""), text),
    input=st.dictionaries(
        st.one_of(st.sampled_from(["data", "body", "INPUT0", "inputs"]), text),
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from([b"[1, 2, 3, 4]", b'{"inputs": []}', b"null", b"[[1e309]]", b"[" * 5000]),
            st.builds(
                lambda n, s: (
                    f'{{"inputs": [{{"name": "INPUT0", "datatype": "FP32", "shape": {s}, '
                    f'"data": {[1.0] * n}}}]}}'
                ).encode(),
                st.integers(0, 8),
                st.lists(dims, max_size=3).map(str),
            ),
        ),
        max_size=3,
    ),
)


@FUZZ
@given(request=ts_request)
def test_torchserve_predictions_answers_every_request(
    fuzzed: ServerProcess, request: ts.PredictionsRequest
) -> None:
    stub = ts_grpc.InferenceAPIsServiceStub(fuzzed.channel())
    try:
        stub.Predictions(request, timeout=20)
    except grpc.RpcError as exc:
        _check(exc.code(), exc.details() or "", request)


header_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "HEAD", "PATCH", "OPTIONS"]),
    path=st.one_of(st.sampled_from(["/metrics", "/stats", "/profile", "/healthz", "/readyz", "/"]),
                   st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=60).map(lambda s: "/" + s)),
    query=st.dictionaries(st.sampled_from(["model", "requests", "x", ""]),
                          st.one_of(st.sampled_from([*MODELS, "5", "0", "-1", "10001", "1e3"]), header_text),
                          max_size=3),
    headers=st.dictionaries(st.sampled_from(["Authorization", "Accept", "X-Any", "Content-Type"]),
                            header_text, max_size=3),
    body=st.binary(max_size=2000),
)  # fmt: skip
def test_http_port_answers_every_request(
    fuzzed: ServerProcess, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
) -> None:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    target = path + ("?" + q if q else "")
    conn = http.client.HTTPConnection("127.0.0.1", fuzzed.metrics_port, timeout=20)
    try:
        conn.request(method, target, body=body or None, headers=headers)
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert resp.status < 500 or resp.status == 501, f"{resp.status} for {method} {target!r}"


@settings(FUZZ, max_examples=60)
@given(
    method=st.sampled_from(["POST", "DELETE", "GET"]),
    model=st.one_of(st.sampled_from(MODELS), header_text),
    requests=st.one_of(st.integers(-5, 20_000).map(str), header_text),
    token=st.one_of(st.none(), header_text),
)
def test_profile_endpoint_answers_every_request(
    fuzzed: ServerProcess, method: str, model: str, requests: str, token: str | None
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fuzzed.metrics_port, timeout=20)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        conn.request(method, f"/profile?{urlencode({'model': model, 'requests': requests})}", headers=headers)
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status in (200, 202, 400, 404, 409), (resp.status, body)
    assert resp.status in (200, 202) or body["error"], body
