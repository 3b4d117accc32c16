"""What one Locust user does: hold a channel to the target, send the current
phase's request (back to back, or at the open-loop schedule), and record it."""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import gevent
import grpc

from loadtest.engine_client import EngineClient, EngineStreamer, SlotResult
from loadtest.engine_dispatch import EngineDispatcher, account
from loadtest.flags import STREAMING, uses_engine
from loadtest.openloop import UNFINISHED, Dispatcher
from loadtest.options import Options
from loadtest.protocols import (
    GrpcError,
    InputSpec,
    KServeClient,
    SetupError,
    Target,
    TorchServeClient,
    backoff_s,
    random_inputs,
    unreachable,
)
from loadtest.results import InputInfo, TargetInfo
from loadtest.run import Run, runs
from loadtest.streaming import KServeStreamClient, OpenAIClient, StreamResult
from loadtest.workload import Workload
from server.proto import grpc_service_pb2 as pb

if TYPE_CHECKING:
    from locust.env import Environment

    from loadtest.plan import Phase

log = logging.getLogger("modelsoak.loadgen")
# How often a user whose closed loop runs in the engine looks at its run and
# phase: a phase change reaches the engine within this time.
HOLD_S = 0.05
_users = itertools.count()  # each user of a process draws its own workload (seed + its number)


def resolve_target(run: Run, opts: Options, batch: int) -> Target:
    """The target for this batch size, asked of the server once per run."""
    key = (opts.host, opts.model, opts.model_version, batch)
    if key not in run.targets:
        if opts.protocol in STREAMING:
            run.targets[key] = resolve_stream_target(opts)
        elif opts.protocol == "torchserve" and opts.model and opts.input_shape is not None:
            spec = InputSpec("INPUT0", opts.datatype or "FP32", (batch, *opts.input_shape))
            run.targets[key] = Target(opts.model, opts.model_version, (spec,), True, "", "torchserve", "", "")
        else:
            probe = KServeClient(opts.host, opts.request_timeout, opts.tls)
            try:
                run.targets[key] = probe.resolve(
                    opts.model, opts.model_version, batch, opts.input_shape, opts.datatype
                )
            finally:
                probe.close()
    return run.targets[key]


def resolve_stream_target(opts: Options) -> Target:
    """A streaming target: the model the server names (OpenAI: GET /v1/models;
    KServe: its metadata, which must have a `text_input`)."""
    if opts.protocol == "openai":
        client = OpenAIClient(opts.host, opts.request_timeout, opts.openai_endpoint, opts.tls)
        try:
            model = client.resolve(opts.model)
        finally:
            client.close()
        return Target(model, "", (), False, "openai", "", "", "")
    stream = KServeStreamClient(opts.host, opts.request_timeout, opts.tls)
    try:
        model = stream.resolve(opts.model)
    finally:
        stream.close()
    probe = KServeClient(opts.host, opts.request_timeout, opts.tls)
    try:  # the server's name, and where its metrics are, as for unary targets
        meta = probe.stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=opts.request_timeout)
        sha, device, metrics = probe._config(model, opts.model_version)
    except grpc.RpcError as exc:
        raise SetupError(f"cannot read metadata from the server: {exc}") from None
    finally:
        probe.close()
    return Target(
        model, opts.model_version, (), False, "decoupled", meta.name, meta.version, sha, device, metrics
    )


def target_info(target: Target) -> TargetInfo:
    return TargetInfo(
        model=target.model,
        version=target.version,
        platform=target.platform,
        server=target.server,
        server_version=target.server_version,
        sha256=target.sha256,
        device=target.device,
        metrics_url=target.metrics_url,
        inputs=[
            InputInfo(i.name, i.datatype, list(i.shape[1:] if target.batchable else i.shape))
            for i in target.inputs
        ],
    )


class Session:
    """One user's connection and counters, for the run under way when it started."""

    def __init__(self, environment: Environment, host: str | None) -> None:
        self.opts = Options.from_parsed(environment.parsed_options, host or environment.host)
        self.environment = environment
        self.streamer: OpenAIClient | KServeStreamClient | EngineStreamer | None = None
        self.workload: Workload | None = None
        if self.opts.protocol in STREAMING:
            o = self.opts
            self.workload = Workload.from_options(
                o.input_tokens, o.output_tokens, o.prompts_file, o.seed + next(_users)
            )
            self.streamer = (OpenAIClient(o.host, o.request_timeout, o.openai_endpoint, o.tls) if o.protocol == "openai"
                             else KServeStreamClient(o.host, o.request_timeout, o.tls))  # fmt: skip
        if self.opts.protocol == "torchserve":
            payload = None
            path = getattr(environment.parsed_options, "payload_file", "") or ""
            if path:
                payload = Path(path).read_bytes()
            self.client: KServeClient | TorchServeClient | EngineClient = TorchServeClient(
                self.opts.host, self.opts.request_timeout, payload, self.opts.tls
            )
        else:
            self.client = KServeClient(self.opts.host, self.opts.request_timeout, self.opts.tls)
        if self.streamer is not None and uses_engine(self.opts.client_engine):
            # Streams are read in the engine, where each token is timed as it arrives.
            self.streamer = EngineStreamer.wrap(environment, self.streamer, self.opts)
        elif self.streamer is None and uses_engine(self.opts.client_engine):
            # The calls go to this process's request engine (loadtest.engine).
            self.client = EngineClient(
                environment, self.client, self.opts.host, self.opts.request_timeout, self.opts.tls
            )
        self.prepared_for: tuple[Run, int] | None = None
        self.sent: Counter[str] = Counter()
        self.total = 0
        self.refusals = 0  # calls in a row the target did not take
        # Closed loop in the engine: what the slot now sends for (run, phase, batch),
        # its generation, the generations results may still come for, calls left.
        self.holding: tuple[Run | None, str, int, bool] | None = None
        self.gen = 0
        self.gens: dict[int, tuple[Run, str, int]] = {}
        self.gen_left = 0

    def close(self) -> None:
        self.holding = None
        self.client.close()
        if self.streamer is not None:
            self.streamer.close()

    def _prepare(self, run: Run, batch: int) -> None:
        target = resolve_target(run, self.opts, batch)
        run.target = target_info(target)
        if self.streamer is not None:
            if isinstance(self.streamer, KServeStreamClient | EngineStreamer):
                self.streamer.resolve(target.model)  # the inputs the model declares
            self.model = target.model
            self.prepared_for = (run, batch)
            return
        arrays = run.arrays.get((target, batch))
        if arrays is None:
            arrays = run.arrays[(target, batch)] = random_inputs(target.inputs, self.opts.seed)
        self.client.prepare(target, arrays)
        self.prepared_for = (run, batch)

    def step(self) -> None:
        run = runs(self.environment).current
        phase = run.phase if run is not None else None
        if self.holding is not None and (phase is None or self.holding != self._hold_key(run, phase)):
            self._release()  # the engine's slot for this user stops: another run, phase, batch or loop
        if run is None or phase is None or run.setup_errors:
            gevent.sleep(0.1)
            return
        if phase.requests_per_user and self.sent[phase.name] >= phase.requests_per_user:
            gevent.sleep(0.2)  # this user's share of the phase is done
            return
        if self.prepared_for != (run, phase.batch_size):
            try:
                self._prepare(run, phase.batch_size)
            except (SetupError, OSError) as exc:
                if not run.setup_errors:
                    run.setup_errors.append(str(exc))
                    log.error("cannot load-test %s: %s", self.opts.host, exc)
                gevent.sleep(1.0)
                return
        dispatcher = run.dispatcher
        if phase.rate > 0 and isinstance(dispatcher, EngineDispatcher) and isinstance(self.client, EngineClient):
            self._hold(run, phase, 0)  # a slot for the engine's schedule (loadtest.engine_dispatch)
            return
        if phase.rate > 0 and isinstance(dispatcher, Dispatcher):
            ticket = dispatcher.take()
            if ticket is None:
                return
            scheduled, name = ticket[0], ticket[1] or phase.name  # the phase that scheduled it
            outcome = "unfinished"
            try:
                err = self._send(run, name, phase.batch_size, scheduled)
                outcome = "measured"
            except BaseException:
                # Killed at the end of the run while waiting for the answer: an
                # unfinished send, whose wait so far is a lower bound of its latency.
                wait_ns = int((time.monotonic() - scheduled) * 1e9)
                run.recorder.record(name, wait_ns, UNFINISHED, phase.batch_size, 0, None)
                raise
            finally:
                dispatcher.ended(outcome)
        elif isinstance(self.client, EngineClient) and phase.rate <= 0:
            self._hold(run, phase, phase.requests_per_user)
            return
        else:
            err = self._send(run, phase.name, phase.batch_size, None)
        self._back_off(run, err)

    @staticmethod
    def _hold_key(run: Run | None, phase: Phase) -> tuple[Run | None, str, int, bool]:
        """What a held slot sends for: closed loop for one phase, or the open loop's
        tickets (each names its own phase) at one batch size."""
        if phase.rate > 0:
            return (run, "", phase.batch_size, True)
        return (run, phase.name, phase.batch_size, False)

    def _hold(self, run: Run, phase: Phase, per_user: int) -> None:
        """A slot in the engine: it sends for this user (closed loop: back to back,
        recorded here as results come back in `_results`; open loop: at the
        schedule's tickets, recorded by the run's dispatcher)."""
        assert isinstance(self.client, EngineClient)
        key = self._hold_key(run, phase)
        if self.holding != key or self.client.engine.dead:
            self.gen += 1
            self.gens = {g: k for g, k in self.gens.items() if g >= self.gen - 2}
            self.gens[self.gen] = (run, phase.name, phase.batch_size)
            self.gen_left = per_user - self.sent[phase.name] if per_user else 0
            mode = "open" if key[3] else "closed"
            self.client.run_slot(self.gen, self.gen_left, self._results, mode, phase.batch_size)
            self.holding = key
        try:
            gevent.sleep(HOLD_S)
        except BaseException:
            self._release()  # the user is stopped: so is its slot
            raise

    def _release(self) -> None:
        self.holding = None
        if isinstance(self.client, EngineClient):
            self.client.halt()

    def _results(self, results: list[SlotResult]) -> None:
        for gen, status, details, size, server, call_ns, _ in results:
            key = self.gens.get(gen)
            if key is None:
                continue
            run, name, batch = key
            if gen == self.gen and self.gen_left:
                self.gen_left -= 1
                if not self.gen_left:
                    self.holding = None  # its limit is sent; warm-up ones are not the phase's
            exc = None if status == "OK" else GrpcError(status, details)
            name = self._count(run, name, None)
            self._account(run, name, batch, call_ns, call_ns, status if exc else "OK", exc, size, server)
            if unreachable(exc):
                run.recorder.note_unreachable(time.time())

    def _back_off(self, run: Run, err: GrpcError | None) -> None:
        """While the target refuses connections, wait before the next send:
        capped, jittered exponential, so a dead target is not hammered and the
        generator's CPU stays free to measure."""
        if not unreachable(err):
            self.refusals = 0
            return
        run.recorder.note_unreachable(time.time())
        self.refusals += 1
        gevent.sleep(backoff_s(self.refusals))

    def _count(self, run: Run, name: str, scheduled: float | None) -> str:
        """A send's name (its phase, or warm-up), counted."""
        if run.warmup.take():  # per run, not per user (loadtest.warmup)
            name = "warmup"
            if scheduled is not None:
                run.recorder.count_openloop("warmup")  # measured, outside the statistics
        self.total += 1
        self.sent[name] += 1
        return name

    def _send(self, run: Run, name: str, batch: int, scheduled: float | None) -> GrpcError | None:
        name = self._count(run, name, scheduled)
        if self.streamer is not None:
            return self._send_stream(run, name, scheduled)
        t0 = time.perf_counter_ns()
        exc: GrpcError | None = None
        # In open loop the dispatcher and its tickets live on gevent's loop, so the
        # call is made here too (a hand-off per ticket to the engine measured worse:
        # docs/explanation/benchmarks.md); the engine runs the closed loop.
        client = self.client.local if isinstance(self.client, EngineClient) else self.client
        try:
            size, server = client.infer()
            status = "OK"
        except GrpcError as e:
            exc, status, size, server = e, e.status, 0, None
        t1 = time.perf_counter_ns()
        latency_ns = call_ns = t1 - t0
        if scheduled is not None:
            # Open loop: from the scheduled send time, waiting for a free user included.
            latency_ns = max(int((time.monotonic() - scheduled) * 1e9), latency_ns)
        self._account(run, name, batch, latency_ns, call_ns, status, exc, size, server)
        return exc

    def _account(self, run: Run, name: str, batch: int, latency_ns: int, call_ns: int, status: str,
                 exc: GrpcError | None, size: int, server: dict[str, int] | None) -> None:  # fmt: skip
        """One send's end: Locust's request event, and the run's recorder."""
        account(self.environment, run.recorder, name, batch, latency_ns, call_ns, status, exc, size, server)

    def _send_stream(self, run: Run, name: str, scheduled: float | None) -> GrpcError | None:
        """One streamed request: its E2E latency recorded like any request's,
        its token timings and counts beside it."""
        assert self.streamer is not None and self.workload is not None
        prompt = self.workload.next()
        exc: GrpcError | None = None
        result = StreamResult()
        t0 = time.perf_counter_ns()
        try:
            result = self.streamer.stream(self.model, prompt, self.opts.seed)
            status = "OK" if result.output_tokens or result.ttft_ns else "NO_TOKENS"
            if status != "OK":
                exc = GrpcError(status, "the stream ended without any text")
        except GrpcError as e:
            exc, status = e, e.status
        call_ns = result.e2e_ns or time.perf_counter_ns() - t0
        latency_ns = call_ns
        if scheduled is not None:
            latency_ns = max(int((time.monotonic() - scheduled) * 1e9), call_ns)
        self.environment.events.request.fire(
            request_type=self.opts.protocol,
            name=name,
            response_time=latency_ns / 1e6,
            response_length=result.size,
            exception=exc,
            context={},
        )
        if name != "warmup":
            run.recorder.record(name, latency_ns, status, 1, result.size, None, call_ns)
            if exc is None:
                # Open loop: waiting for a free user counts before the first token.
                wait = latency_ns - call_ns
                ttft = result.ttft_ns + wait if result.ttft_ns else 0
                tpot = result.tpot_ns
                counts = {"streams": 1, "prompt": result.prompt_tokens, "output": result.output_tokens,
                          "from_usage": int(result.source == "usage"),
                          "good": int(_good(run.good_ms, ttft, tpot, latency_ns))}  # fmt: skip
                counts.update(server_split(result.server_ns))
                run.recorder.record_stream(name, ttft, result.itl_ns, tpot, counts, result.itl_added_ns)
        return exc


def server_split(ns: dict[str, int]) -> dict[str, int]:
    """The server's own split of a streamed request (ns), where it reports one:
    queue (waiting for a sequence slot), prefill, time to first token (arrival to
    first token: queue and prefill in it) and decode (first token to end)."""
    if "modelsoak_server_total_ns" not in ns or "modelsoak_ttft_ns" not in ns:
        return {}
    return {"server_streams": 1, "server_queue_ns": ns.get("modelsoak_queue_ns", 0),
            "server_prefill_ns": ns.get("modelsoak_prefill_ns", 0), "server_ttft_ns": ns["modelsoak_ttft_ns"],
            "server_decode_ns": max(ns["modelsoak_server_total_ns"] - ns["modelsoak_ttft_ns"], 0)}  # fmt: skip


def _good(limits: dict[str, float], ttft_ns: int, tpot_ns: int | None, e2e_ns: int) -> bool:
    """A streamed request within every goodput limit the plan sets."""
    checks = {"ttft_ms": ttft_ns, "tpot_ms": tpot_ns if tpot_ns is not None else 0, "e2e_ms": e2e_ns}
    return all(checks[k] <= limit * 1e6 for k, limit in limits.items() if k in checks)
