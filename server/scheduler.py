"""Dynamic batching for one model on the server's asyncio loop.

Requests wait in a bounded queue; one worker coroutine per model instance takes
the oldest request and the compatible ones behind it (up to max_batch_size
samples, waiting at most max_queue_delay for the batch to fill) and runs the
batch on its instance. A fast model runs inline on the loop; a slow one (or any
model on CUDA) runs on the instance's own thread, so the loop keeps serving.

Why a loop and not a thread per request: with grpcio's thread-pool server, every
request holds a thread and the threads fight over the GIL; on a small model
that costs more than the model. One loop thread does all protocol work and
hands only model execution to threads.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from server.errors import DeadlineExceeded, ExecutionFailed, QueueFull, ServingError, ShuttingDown
from server.stats import ModelStats, RequestTiming
from server.types import Backend, ExecutionResult, ModelInfo

_QUEUED, _TAKEN, _DONE = 0, 1, 2
# A model whose executions take less than this (median of the recent ones) runs inline on
# the loop: a thread hand-off would cost more than the execution.
INLINE_BELOW_NS = 150_000


class _Request:
    __slots__ = ("arrived_ns", "batch", "future", "inputs", "key", "outputs", "state", "taken_ns", "timer")

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        batch: int,
        outputs: Sequence[str],
        future: asyncio.Future[Any] | None,
    ) -> None:
        self.inputs = inputs
        self.batch = batch
        self.outputs = outputs
        self.future = future
        self.arrived_ns = time.perf_counter_ns()
        self.taken_ns = 0
        self.state = _QUEUED
        self.timer: asyncio.TimerHandle | None = None
        self.key: Any = None


class ProfileHook:
    """Called around each model execution while a profiling window is open, on
    the thread that runs the execution."""

    def before(self, inst: Backend) -> None:
        pass

    def after(self, inst: Backend, n_requests: int) -> None:
        pass


class Scheduler:
    """Queue and instances of one model. `infer` runs on the server's loop."""

    def __init__(
        self,
        info: ModelInfo,
        instances: Sequence[Backend],
        stats: ModelStats,
        probes: bool = True,
        execution: str = "auto",
    ) -> None:
        if not instances:
            raise ValueError("a model needs at least one instance")
        if execution not in ("auto", "inline", "thread"):
            raise ValueError(f"execution {execution!r}: expected auto, inline or thread")
        self.info = info
        self.stats = stats
        self.probes = probes
        self._instances = list(instances)
        self._queue: deque[_Request] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()
        self._fillers: deque[asyncio.Future[None]] = deque()
        self._busy: set[int] = set()
        self._closed = False
        self._in_flight = 0
        self._drained: asyncio.Event | None = None
        self._max_batch = max(info.max_batch_size, 1)
        self._delay_ns = int(info.max_queue_delay_us) * 1000
        self._execution = execution
        # How long executions take decides where they run. Unknown until the first
        # (which therefore runs on a thread); then the median of the recent ones,
        # which a busy machine's occasional preemption does not move. CUDA
        # executions synchronise the stream, so they never run on the loop.
        self._recent: deque[int] = deque(maxlen=16)
        self._executions = 0
        self._fast_model = False
        self._never_inline = info.device.startswith("cuda")
        self._profile_hook: ProfileHook | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._threads = [
            ThreadPoolExecutor(1, thread_name_prefix=f"{info.name}-{i}") for i in range(len(instances))
        ]

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start one worker per instance; call on the server's running loop."""
        self._loop = asyncio.get_running_loop()
        self._drained = asyncio.Event()
        self._drained.set()
        for i, inst in enumerate(self._instances):
            self._tasks.append(self._loop.create_task(self._worker(i, inst)))

    def close(self) -> None:
        """Refuse new requests; queued and running ones still complete."""
        self._closed = True
        self._wake_idle(all_of_them=True)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or running; False on timeout."""
        assert self._drained is not None
        try:
            await asyncio.wait_for(self._drained.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    def shutdown_threads(self) -> None:
        for ex in self._threads:
            ex.shutdown(wait=False, cancel_futures=True)

    @property
    def instances(self) -> list[Backend]:
        return list(self._instances)

    def set_profile_hook(self, hook: ProfileHook | None) -> None:
        self._profile_hook = hook

    def with_idle_instances(self, fn: Callable[[Backend], None]) -> None:
        """Call `fn` on each instance not executing now (on the loop, where no
        execution can start meanwhile). Safe to call from any thread."""
        loop = self._loop
        if loop is None:
            return
        if _running_loop() is loop:
            self._each_idle(fn)
        else:
            loop.call_soon_threadsafe(self._each_idle, fn)

    def _each_idle(self, fn: Callable[[Backend], None]) -> None:
        for i, inst in enumerate(self._instances):
            if i not in self._busy:
                fn(inst)

    # -- requests -------------------------------------------------------------------

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        batch: int,
        outputs: Sequence[str],
        timeout_s: float | None = None,
    ) -> tuple[dict[str, np.ndarray], RequestTiming | None]:
        """Queue one request and wait for its outputs and timing."""
        if self._fast_path_open():
            return self._run_now(inputs, batch, outputs)
        req = self._submit(inputs, batch, outputs, timeout_s)
        try:
            assert req.future is not None
            result: tuple[dict[str, np.ndarray], RequestTiming | None] = await req.future
            return result
        except asyncio.CancelledError:
            self._withdraw(req)  # the client went away: do not run it
            raise

    def _inline(self) -> bool:
        return self._execution == "inline" or (
            self._execution == "auto" and self._fast_model and not self._never_inline
        )

    def _observe(self, spent_ns: int) -> None:
        self._recent.append(spent_ns)
        self._executions += 1
        if self._executions <= 8 or self._executions % 8 == 0:
            window = sorted(self._recent)
            self._fast_model = window[len(window) // 2] < INLINE_BELOW_NS

    def _fast_path_open(self) -> bool:
        """Nothing queued, an instance idle, inline execution and no reason to wait
        for a batch to fill: the request can run right here, with no queue hop."""
        return (
            not self._queue
            and not self._closed
            and len(self._busy) < len(self._instances)
            and (self._delay_ns <= 0 or self._max_batch <= 1)
            and self._inline()
        )

    def _run_now(
        self, inputs: dict[str, np.ndarray], batch: int, outputs: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], RequestTiming | None]:
        """The fast path: one request, executed here on the loop (kept lean: it
        is the whole of the server's own work on a small model)."""
        busy = self._busy
        index = 0
        while index in busy:
            index += 1
        inst = self._instances[index]
        hook = self._profile_hook
        busy.add(index)
        try:
            if hook is not None:
                hook.before(inst)
            try:
                result = inst.run(inputs, outputs, 1)
            finally:
                if hook is not None:
                    hook.after(inst, 1)
        except ServingError:
            raise
        except Exception as exc:  # the framework's own errors
            raise self._failure(exc, batch) from exc
        finally:
            busy.discard(index)
        t = result.times
        self._observe(t.h2d_ns + t.compute_ns + t.d2h_ns)
        if not self.probes:
            return result.outputs, None
        self.stats.record_execution(batch, t.h2d_ns, t.compute_ns, t.d2h_ns)
        return result.outputs, RequestTiming(0, 0, t.h2d_ns, t.compute_ns, t.d2h_ns, 0, batch, 1, t.clock)

    def _failure(self, exc: Exception, samples: int) -> ExecutionFailed:
        return ExecutionFailed(
            f"model '{self.info.name}' failed on a batch of {samples}: {type(exc).__name__}: {exc}"
        )

    def _submit(
        self, inputs: dict[str, np.ndarray], batch: int, outputs: Sequence[str], timeout_s: float | None
    ) -> _Request:
        if self._closed:
            raise ShuttingDown(f"model '{self.info.name}': the server is shutting down")
        limit = self.info.max_queue_size
        if limit > 0 and len(self._queue) >= limit:
            raise QueueFull(
                f"model '{self.info.name}': queue full ({len(self._queue)} requests waiting, "
                f"max_queue_size {limit}); the server is overloaded"
            )
        loop = self._loop
        assert loop is not None and self._drained is not None, "Scheduler.start() was not called"
        req = _Request(inputs, batch, outputs, loop.create_future())
        if self.info.batchable and self._max_batch > 1:
            req.key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in inputs.items())
        if timeout_s is not None:
            req.timer = loop.call_later(timeout_s, self._expire, req)
        self._queue.append(req)
        self._in_flight += 1
        self._drained.clear()
        self.stats.queue_depth = len(self._queue)
        self.stats.in_flight = self._in_flight
        if self._fillers:
            _resolve(self._fillers.popleft())
        else:
            self._wake_idle()
        return req

    def _finish(self, req: _Request, result: Any = None, error: BaseException | None = None) -> None:
        if req.state == _DONE:
            return
        req.state = _DONE
        if req.timer is not None:
            req.timer.cancel()
        self._in_flight -= 1
        self.stats.in_flight = self._in_flight
        if self._in_flight == 0 and self._drained is not None:
            self._drained.set()
        fut = req.future
        if fut is None or fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def _expire(self, req: _Request) -> None:
        """The request's deadline passed: drop it if it has not started."""
        if req.state != _QUEUED:
            return
        self._queue.remove(req)
        self.stats.queue_depth = len(self._queue)
        waited = (time.perf_counter_ns() - req.arrived_ns) / 1e6
        self._finish(
            req,
            error=DeadlineExceeded(
                f"model '{self.info.name}': the request's deadline passed after {waited:.1f} ms in "
                f"the queue ({len(self._queue)} requests waiting); it was dropped unexecuted"
            ),
        )

    def _withdraw(self, req: _Request) -> None:
        if req.state == _QUEUED:
            self._queue.remove(req)
            self.stats.queue_depth = len(self._queue)
        self._finish(req, error=asyncio.CancelledError())

    def _wake_idle(self, all_of_them: bool = False) -> None:
        while self._idle:
            _resolve(self._idle.popleft())
            if not all_of_them:
                return

    # -- workers ----------------------------------------------------------------------

    async def _worker(self, index: int, inst: Backend) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closed:
                    return
                idle: asyncio.Future[None] = loop.create_future()
                self._idle.append(idle)
                await idle
                continue
            batch = await self._take_batch(loop)
            if batch:
                self._busy.add(index)
                try:
                    await self._execute(index, inst, batch)
                finally:
                    self._busy.discard(index)

    async def _take_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Request]:
        while True:
            chosen, total = self._scan()
            if not chosen or total >= self._max_batch or self._delay_ns <= 0 or not self.info.batchable:
                break
            left = chosen[0].arrived_ns + self._delay_ns - time.perf_counter_ns()
            if left <= 0:
                break
            filled: asyncio.Future[None] = loop.create_future()
            self._fillers.append(filled)
            timer = loop.call_later(left / 1e9, _resolve, filled)
            await filled
            timer.cancel()
            if filled in self._fillers:
                self._fillers.remove(filled)
        self._remove(chosen)
        if self._queue:
            self._wake_idle()  # more work than this batch: let an idle instance start on it
        return chosen

    def _scan(self) -> tuple[list[_Request], int]:
        chosen: list[_Request] = []
        total = 0
        for req in self._queue:
            if not chosen:
                chosen.append(req)
                total = req.batch
                if req.key is None:
                    break
            elif req.key == chosen[0].key and total + req.batch <= self._max_batch:
                chosen.append(req)
                total += req.batch
                if total >= self._max_batch:
                    break
        return chosen, total

    def _remove(self, chosen: list[_Request]) -> None:
        now = time.perf_counter_ns()
        queue = self._queue
        if len(chosen) == len(queue) or all(queue[i] is r for i, r in enumerate(chosen)):
            for _ in chosen:
                queue.popleft()
        else:
            taken = set(map(id, chosen))
            self._queue = deque(r for r in queue if id(r) not in taken)
        for req in chosen:
            req.state = _TAKEN
            req.taken_ns = now
        self.stats.queue_depth = len(self._queue)

    async def _execute(self, index: int, inst: Backend, batch: list[_Request]) -> None:
        if self._inline():
            outcome = self._run(inst, batch)
        else:
            assert self._loop is not None
            outcome = await self._loop.run_in_executor(self._threads[index], self._run, inst, batch)
        self._deliver(batch, *outcome)

    def _run(
        self, inst: Backend, batch: list[_Request]
    ) -> tuple[ExecutionResult | None, int, BaseException | None]:
        """Assemble and run one batch (inline or on the instance's thread)."""
        t0 = time.perf_counter_ns()
        wanted: list[str] = list(batch[0].outputs)
        for req in batch[1:]:
            wanted.extend(o for o in req.outputs if o not in wanted)
        hook = self._profile_hook
        try:
            if len(batch) == 1:
                inputs = batch[0].inputs
            else:
                inputs = {name: np.concatenate([r.inputs[name] for r in batch]) for name in batch[0].inputs}
            assembly = time.perf_counter_ns() - t0
            if hook is not None:
                hook.before(inst)
            try:
                result = inst.run(inputs, wanted, n_requests=len(batch))
            finally:
                if hook is not None:
                    hook.after(inst, len(batch))
        except ServingError as exc:
            return None, 0, exc
        except Exception as exc:  # the framework's own errors
            return None, 0, self._failure(exc, sum(r.batch for r in batch))
        return result, assembly, None

    def _deliver(
        self,
        batch: list[_Request],
        result: ExecutionResult | None,
        assembly_ns: int,
        error: BaseException | None,
    ) -> None:
        if error is not None or result is None:
            for req in batch:
                self._finish(req, error=error)
            return
        for req, outcome in zip(batch, self._split(result, assembly_ns, batch), strict=True):
            self._finish(req, outcome)

    def _split(
        self, result: ExecutionResult, assembly_ns: int, batch: list[_Request]
    ) -> list[tuple[dict[str, np.ndarray], RequestTiming | None]]:
        """Each request's rows of the outputs, and its timing; records statistics."""
        times = result.times
        self._observe(assembly_ns + times.h2d_ns + times.compute_ns + times.d2h_ns)
        outputs = result.outputs
        samples = batch[0].batch if len(batch) == 1 else sum(r.batch for r in batch)
        if self.probes:
            self.stats.record_execution(samples, assembly_ns + times.h2d_ns, times.compute_ns, times.d2h_ns)
        out = []
        offset = 0
        for req in batch:
            if len(batch) == 1:
                mine = {o: outputs[o] for o in req.outputs}
            else:
                end = offset + req.batch
                mine = {o: outputs[o][offset:end] for o in req.outputs}
                offset = end
            timing = None
            if self.probes:
                timing = RequestTiming(
                    req.taken_ns - req.arrived_ns,
                    assembly_ns,
                    times.h2d_ns,
                    times.compute_ns,
                    times.d2h_ns,
                    0,
                    samples,
                    len(batch),
                    times.clock,
                )
            out.append((mine, timing))
        return out


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
