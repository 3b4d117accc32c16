"""Token streaming in the load generator: `--protocol openai` (an
OpenAI-compatible HTTP API) and `--protocol kserve-stream` (ModelStreamInfer to
a decoupled model), against our server's `stream-sleep` (known timing and
lengths) and `tiny-lm`, locally and distributed. Real server, real Locust."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from server.netutil import free_port
from tests.conftest import LOCUST, ROOT, ServerProcess, master_cmd, run_locust, worker_cmd

TTFT_MS, ITL_MS, TOKENS = 15, 5, 8


@pytest.fixture(scope="module")
def stream_sleep(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_module_server(
        "--model", "stream-sleep", "--param", f"ttft_ms={TTFT_MS}", "--param", f"itl_ms={ITL_MS}"
    )


def _host(server: ServerProcess, protocol: str) -> str:
    return f"http://127.0.0.1:{server.metrics_port}" if protocol == "openai" else f"grpc://{server.address}"


@pytest.mark.parametrize("protocol", ["openai", "kserve-stream"])
def test_streams_are_measured_token_by_token(
    stream_sleep: ServerProcess, tmp_path: Path, protocol: str
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("streaming: {ttft_p99_ms: 5000, ttft_ms: 5000}\n")
    run = run_locust(None, tmp_path, "-u", "3", "-r", "3", "-t", "4", "--protocol", protocol,
                     "--output-tokens", str(TOKENS), "--input-tokens", "uniform:4:16", "--slo-file", str(plan),
                     host=_host(stream_sleep, protocol))  # fmt: skip
    s = run.summary()
    st = s["totals"]["streaming"]
    ok = s["totals"]["requests"] - s["totals"]["failures"]
    assert ok > 0 and st["streams"] == ok, (s["totals"], st)
    # stream-sleep sends exactly max_tokens tokens and reports its usage.
    assert st["output_tokens"] == TOKENS * st["streams"] and st["tokens_source"] == "usage", st
    assert st["itl_ms"]["count"] == (TOKENS - 1) * st["streams"], st["itl_ms"]
    assert st["ttft_ms"]["count"] == st["tpot_ms"]["count"] == st["streams"]
    # The server sends the first token no earlier than ttft_ms after the request arrived.
    assert st["ttft_ms"]["min"] >= TTFT_MS, st["ttft_ms"]
    assert st["prompt_tokens"] > 0
    # Every stream met the (loose) goodput limit; the run judged the TTFT SLO.
    assert st["good_streams"] == st["streams"] and st["good_limits_ms"] == {"ttft_ms": 5000.0}, st
    assert any(c["metric"] == "p99 time to first token of infer" for c in s["slo"]), s["slo"]
    phase = next(p for p in s["phases"] if p["name"] == "infer")
    assert phase["streaming"]["streams"] == st["streams"]
    report = (run.results / "report.md").read_text()
    assert "## Streaming" in report and "counts from the server's own usage counts" in report
    assert (run.results / "charts" / "tokens.png").stat().st_size > 0
    # Over time: the series carries each interval's TTFT and ITL percentiles, and a chart draws them.
    points = [json.loads(line) for line in (run.results / "timeseries.jsonl").read_text().splitlines()]
    timed = [p for p in points if "ttft_p50_ms" in p]
    assert timed and all(p["ttft_p50_ms"] >= TTFT_MS and p["itl_p99_ms"] >= p["itl_p50_ms"] for p in timed), points
    assert (run.results / "charts" / "tokens-over-time.png").stat().st_size > 0
    # Our server stamps each token's send: every gap is compared with the server's own.
    added = st["itl_added_ms"]
    assert added["count"] == st["itl_ms"]["count"] and 0 < added["p50"] < ITL_MS, added
    assert "against the server's own" in report
    if protocol == "kserve-stream":  # our server's own split of a stream comes back in its parameters
        assert st["server_split_ms"]["ttft"] >= TTFT_MS and st["server_split_ms"]["decode"] > 0, st
        assert "The server's split (means)" in report


def test_tiny_lm_streams_through_the_generator_in_distributed_mode(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server("--model", "tiny-lm")
    port = free_port()
    master = subprocess.Popen(
        master_cmd(
            server,
            tmp_path,
            port,
            2,
            "-u",
            "4",
            "-r",
            "4",
            "-t",
            "5",
            "--protocol",
            "kserve-stream",
            "--output-tokens",
            "6",
            "--input-tokens",
            "8",
            "--warmup-requests",
            "2",
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workers = [subprocess.Popen(worker_cmd(port), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(2)]  # fmt: skip
    out, _ = master.communicate(timeout=180)
    for w in workers:
        w.wait(60)
    assert master.returncode in (0, 1, 4), out[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(s["provenance"]["workers"]) == 2
    st = s["totals"]["streaming"]
    ok = s["totals"]["requests"] - s["totals"]["failures"]
    # Both workers' streams merged on the master: every successful request, each its 6 tokens.
    assert ok > 0 and st["streams"] == ok and st["output_tokens"] == 6 * ok, (s["totals"], st)
    assert st["itl_ms"]["count"] == 5 * ok and st["tokens_source"] == "usage"


def test_openai_chat_with_a_prompts_file(stream_sleep: ServerProcess, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 3}\n'
                       '{"prompt": "a longer prompt of words", "max_tokens": 5}\n')  # fmt: skip
    run = run_locust(None, tmp_path, "-u", "1", "-r", "1", "-t", "3", "--protocol", "openai",
                     "--openai-endpoint", "chat", "--prompts-file", str(prompts), "--warmup-requests", "0",
                     host=_host(stream_sleep, "openai"))  # fmt: skip
    st = run.summary()["totals"]["streaming"]
    # One user sends the file's prompts in turn: 3 and 5 tokens alternately.
    n = st["streams"]
    assert n >= 2 and st["output_tokens"] in (4 * n, 4 * n - 1, 4 * n + 1), st


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input-tokens", "lots"], "--input-tokens 'lots': expected N, uniform:LOW:HIGH or normal:MEAN:SD"),
        (["--output-tokens", "uniform:9:3"], "--output-tokens 'uniform:9:3': expected 1 <= LOW <= HIGH"),
        (["--prompts-file", "/nonexistent/p.jsonl"], "--prompts-file /nonexistent/p.jsonl: No such file"),
    ],
)
def test_bad_streaming_options_are_named(
    stream_sleep: ServerProcess, tmp_path: Path, args: list[str], message: str
) -> None:
    run = run_locust(None, tmp_path, "-u", "1", "-r", "1", "-t", "2", "--protocol", "openai", *args,
                     host=_host(stream_sleep, "openai"))  # fmt: skip
    assert run.returncode != 0 and message in run.output, run.output[-2000:]


def test_streaming_slo_without_a_streaming_protocol_is_refused(
    stream_sleep: ServerProcess, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("streaming: {ttft_p99_ms: 100}\n")
    proc = subprocess.run(
        [
            LOCUST,
            "-f",
            str(ROOT / "loadgen"),
            "--headless",
            "--host",
            f"grpc://{stream_sleep.address}",
            "-u",
            "1",
            "-t",
            "2",
            "--slo-file",
            str(plan),
            "--results-dir",
            str(tmp_path),
            "--run-id",
            "run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-2000:]
    assert (
        "streaming.ttft_p99_ms is judged only on streamed requests: give --protocol openai or kserve-stream"
        in text
    )


def test_capacity_search_judges_streamed_steps_on_token_latency(
    stream_sleep: ServerProcess, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("capacity: {start_rate: 40, max_steps: 2, min_step_s: 3, max_step_s: 4, latency_ms: 500}\n"
                    f"streaming: {{itl_p99_ms: {ITL_MS * 20}}}\n")  # fmt: skip
    run = run_locust(None, tmp_path, "--protocol", "kserve-stream", "--output-tokens", str(TOKENS),
                     "--scenario", "capacity", "--slo-file", str(plan), "--warmup-requests", "0",
                     host=_host(stream_sleep, "kserve-stream"))  # fmt: skip
    cap = run.summary()["capacity"]
    assert cap["criterion"] == f"ITL p99 < {ITL_MS * 20} ms", cap
    assert len(cap["steps"]) == 2, cap["steps"]
    # 40 streams/s of 8 tokens for 3 s or more: enough inter-token latencies to bound their p99
    # (a whole-request p99 would need 662 requests, and every step would fail for want of them).
    first = cap["steps"][0]
    assert first["passed"] and first["reason"] == "", first
    assert cap["found_rps"] is not None and cap["found_rps"] >= 40, cap
    report = (run.results / "report.md").read_text()
    assert f"- SLO: ITL p99 < {ITL_MS * 20} ms" in report
