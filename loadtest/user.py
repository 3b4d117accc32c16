"""What one Locust user does: hold a channel to the target, send the current
phase's request (back to back, or at the open-loop schedule), and record it."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import gevent

from loadtest.openloop import UNFINISHED
from loadtest.options import Options
from loadtest.protocols import (
    GrpcError,
    InputSpec,
    KServeClient,
    SetupError,
    Target,
    TorchServeClient,
    random_inputs,
    unreachable,
)
from loadtest.results import InputInfo, TargetInfo
from loadtest.run import Run, runs

if TYPE_CHECKING:
    from locust.env import Environment

log = logging.getLogger("modelsoak.loadgen")
# Back-off while the target refuses connections: 50 ms doubling to 2 s, jittered.
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 2.0


def resolve_target(run: Run, opts: Options, batch: int) -> Target:
    """The target for this batch size, asked of the server once per run."""
    key = (opts.host, opts.model, opts.model_version, batch)
    if key not in run.targets:
        if opts.protocol == "torchserve" and opts.model and opts.input_shape is not None:
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


def target_info(target: Target) -> TargetInfo:
    return TargetInfo(
        model=target.model,
        version=target.version,
        platform=target.platform,
        server=target.server,
        server_version=target.server_version,
        sha256=target.sha256,
        device=target.device,
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
        if self.opts.protocol == "torchserve":
            payload = None
            path = getattr(environment.parsed_options, "payload_file", "") or ""
            if path:
                payload = Path(path).read_bytes()
            self.client: KServeClient | TorchServeClient = TorchServeClient(
                self.opts.host, self.opts.request_timeout, payload, self.opts.tls
            )
        else:
            self.client = KServeClient(self.opts.host, self.opts.request_timeout, self.opts.tls)
        self.prepared_for: tuple[Run, int] | None = None
        self.sent: Counter[str] = Counter()
        self.total = 0
        self.refusals = 0  # calls in a row the target did not take

    def close(self) -> None:
        self.client.close()

    def _prepare(self, run: Run, batch: int) -> None:
        target = resolve_target(run, self.opts, batch)
        run.target = target_info(target)
        arrays = run.arrays.get((target, batch))
        if arrays is None:
            arrays = run.arrays[(target, batch)] = random_inputs(target.inputs, self.opts.seed)
        self.client.prepare(target, arrays)
        self.prepared_for = (run, batch)

    def step(self) -> None:
        run = runs(self.environment).current
        phase = run.phase if run is not None else None
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
        if phase.rate > 0 and dispatcher is not None:
            scheduled = dispatcher.take()
            if scheduled is None:
                return
            outcome = "unfinished"
            try:
                err = self._send(run, phase.name, phase.batch_size, scheduled)
                outcome = "measured"
            except BaseException:
                # Killed at the end of the run while waiting for the answer: an
                # unfinished send, whose wait so far is a lower bound of its latency.
                wait_ns = int((time.monotonic() - scheduled) * 1e9)
                run.recorder.record(phase.name, wait_ns, UNFINISHED, phase.batch_size, 0, None)
                raise
            finally:
                dispatcher.ended(outcome)
        else:
            err = self._send(run, phase.name, phase.batch_size, None)
        self._back_off(run, err)

    def _back_off(self, run: Run, err: GrpcError | None) -> None:
        """While the target refuses connections, wait before the next send:
        capped, jittered exponential, so a dead target is not hammered and the
        generator's CPU stays free to measure."""
        if not unreachable(err):
            self.refusals = 0
            return
        run.recorder.note_unreachable(time.time())
        self.refusals += 1
        delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(self.refusals - 1, 16))
        gevent.sleep(delay * random.uniform(0.5, 1.0))

    def _send(self, run: Run, name: str, batch: int, scheduled: float | None) -> GrpcError | None:
        if self.total < self.opts.warmup_requests:
            name = "warmup"
            if scheduled is not None:
                run.recorder.count_openloop("warmup")  # measured, outside the statistics
        self.total += 1
        self.sent[name] += 1
        t0 = time.perf_counter_ns()
        exc: GrpcError | None = None
        try:
            size, server = self.client.infer()
            status = "OK"
        except GrpcError as e:
            exc, status, size, server = e, e.status, 0, None
        t1 = time.perf_counter_ns()
        latency_ns = t1 - t0
        if scheduled is not None:
            # Open loop: from the scheduled send time, waiting for a free user included.
            latency_ns = max(int((time.monotonic() - scheduled) * 1e9), latency_ns)
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=latency_ns / 1e6,
            response_length=size,
            exception=exc,
            context={},
        )
        if name != "warmup":
            run.recorder.record(name, latency_ns, status, batch, size, server)
        return exc
