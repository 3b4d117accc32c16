"""Dynamic batching for one model: a bounded queue, model instances, deadlines.

Execution happens on the gRPC handler threads themselves (leader/follower): a
request that finds an idle model instance becomes the leader, forms a batch
from the queue (waiting at most `max_queue_delay` for it to fill), runs it and
hands the results to the followers in it. When it is done and requests are
still queued, it hands the instance to the oldest of them, which leads next.
Compared with dedicated worker threads this saves two thread switches per
request, which is most of the server's own overhead on a small model; under
concurrency requests queue up while an instance is busy, so batches form the
same way.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from server.errors import DeadlineExceeded, ExecutionFailed, QueueFull, ServingError, ShuttingDown
from server.stats import ModelStats, RequestTiming
from server.types import Backend, ModelInfo

_QUEUED, _TAKEN, _DONE = 0, 1, 2


class _Pending:
    __slots__ = (
        "arrived_ns", "batch", "deadline_ns", "error", "event", "inputs", "key", "leading",
        "outputs", "promoted", "result", "state", "taken_ns", "timing",
    )  # fmt: skip

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        batch: int,
        outputs: Sequence[str],
        deadline_ns: int | None,
        batchable: bool,
    ) -> None:
        self.inputs = inputs
        self.batch = batch
        self.outputs = outputs
        self.deadline_ns = deadline_ns
        self.arrived_ns = time.perf_counter_ns()
        self.taken_ns = 0
        self.event = threading.Event()
        self.state = _QUEUED
        self.promoted: Backend | None = None
        # True while this request's own thread holds an instance and leads.
        self.leading = False
        self.result: dict[str, np.ndarray] | None = None
        self.error: ServingError | None = None
        self.timing: RequestTiming | None = None
        # Requests whose inputs agree beyond the batch dimension can share a batch.
        self.key = (
            tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(inputs.items())) if batchable else None
        )

    def finish(self, error: ServingError | None = None) -> None:
        self.error = error
        self.state = _DONE
        self.event.set()


class Scheduler:
    """Queue and instances of one model; `infer` is called from handler threads."""

    def __init__(
        self, info: ModelInfo, instances: Sequence[Backend], stats: ModelStats, probes: bool = True
    ) -> None:
        if not instances:
            raise ValueError("a model needs at least one instance")
        self.info = info
        self.stats = stats
        self.probes = probes
        self._instances = list(instances)
        self._free = list(instances)
        self._queue: deque[_Pending] = deque()
        self._lock = threading.Lock()
        self._fill = threading.Condition(self._lock)
        self._filling = 0
        self._closed = False
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self._max_batch = max(info.max_batch_size, 1)
        self._delay_ns = int(info.max_queue_delay_us) * 1000
        self._profile_hook: ProfileHook | None = None

    # -- public ---------------------------------------------------------------

    def infer(
        self,
        inputs: dict[str, np.ndarray],
        batch: int,
        outputs: Sequence[str],
        timeout_s: float | None = None,
    ) -> tuple[dict[str, np.ndarray], RequestTiming | None]:
        """Run one request through the queue; returns its outputs and timing."""
        deadline = None if timeout_s is None else time.perf_counter_ns() + int(timeout_s * 1e9)
        req = _Pending(inputs, batch, outputs, deadline, self.info.batchable)
        with self._lock:
            if self._closed:
                raise ShuttingDown(f"model '{self.info.name}': the server is shutting down")
            limit = self.info.max_queue_size
            if limit > 0 and len(self._queue) >= limit:
                raise QueueFull(
                    f"model '{self.info.name}': queue full ({len(self._queue)} requests waiting, "
                    f"max_queue_size {limit}); the server is overloaded"
                )
            self._queue.append(req)
            self._in_flight += 1
            self.stats.queue_depth = len(self._queue)
            self.stats.in_flight = self._in_flight
            if self._filling:
                self._fill.notify()
            inst = self._free.pop() if self._free else None
            req.leading = inst is not None
        try:
            if inst is None:
                inst = self._wait_turn(req)
            if inst is not None:
                self._lead(inst, req)
        finally:
            with self._lock:
                self._in_flight -= 1
                self.stats.in_flight = self._in_flight
                if self._in_flight == 0:
                    self._idle.notify_all()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result, req.timing

    def close(self) -> None:
        """Refuse new requests; queued and running ones still complete."""
        with self._lock:
            self._closed = True

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or running; False on timeout."""
        end = time.monotonic() + timeout_s
        with self._lock:
            while self._in_flight:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    @property
    def instances(self) -> list[Backend]:
        return list(self._instances)

    def set_profile_hook(self, hook: ProfileHook | None) -> None:
        self._profile_hook = hook

    def with_idle_instances(self, fn: Callable[[Backend], None]) -> None:
        """Call `fn` on each instance not running now, holding it meanwhile."""
        with self._lock:
            idle, self._free = self._free, []
        try:
            for inst in idle:
                fn(inst)
        finally:
            for inst in idle:
                self._release(inst)

    # -- followers --------------------------------------------------------------

    def _wait_turn(self, req: _Pending) -> Backend | None:
        """Wait to be served or to be handed an instance; None when served."""
        timeout = None
        if req.deadline_ns is not None:
            timeout = max(0.0, (req.deadline_ns - time.perf_counter_ns()) / 1e9)
        req.event.wait(timeout)
        with self._lock:
            if req.promoted is not None:
                inst, req.promoted = req.promoted, None
                req.event.clear()
                return inst
            if req.state == _QUEUED:  # the deadline passed while it waited
                self._queue.remove(req)
                self.stats.queue_depth = len(self._queue)
                req.finish(self._deadline_error(req))
                return None
        # Served, or taken into a running batch that will finish it.
        req.event.wait()
        return None

    def _deadline_error(self, req: _Pending) -> DeadlineExceeded:
        waited = (time.perf_counter_ns() - req.arrived_ns) / 1e6
        return DeadlineExceeded(
            f"model '{self.info.name}': the request's deadline passed after {waited:.1f} ms in "
            f"the queue ({len(self._queue)} requests waiting); it was dropped unexecuted"
        )

    # -- leaders ----------------------------------------------------------------

    def _lead(self, inst: Backend, me: _Pending) -> None:
        """Run batches on `inst` until `me` is served, then pass the instance on."""
        me.leading = True
        while me.state != _DONE:
            with self._lock:
                batch = self._take_batch()
            if batch:
                self._execute(inst, batch, me)
            elif me.state != _DONE:
                # Another instance's leader took our request: let it finish.
                self._release(inst)
                me.event.wait()
                return
        self._release(inst)

    def _release(self, inst: Backend) -> None:
        """Hand `inst` to the oldest queued request without one, or free it."""
        with self._lock:
            for req in self._queue:
                if not req.leading:
                    req.leading = True
                    req.promoted = inst
                    req.event.set()
                    return
            self._free.append(inst)

    def _take_batch(self) -> list[_Pending]:
        """Pick the next batch from the queue (lock held); may wait to fill it."""
        while True:
            chosen, total, expired = self._scan()
            for req in expired:
                self._queue.remove(req)
                req.finish(self._deadline_error(req))
            if not chosen:
                break
            if total >= self._max_batch or not self.info.batchable or self._delay_ns <= 0:
                break
            left = chosen[0].arrived_ns + self._delay_ns - time.perf_counter_ns()
            if left <= 0:
                break
            self._filling += 1
            self._fill.wait(left / 1e9)
            self._filling -= 1
        now = time.perf_counter_ns()
        for req in chosen:
            self._queue.remove(req)
            req.state = _TAKEN
            req.taken_ns = now
        self.stats.queue_depth = len(self._queue)
        return chosen

    def _scan(self) -> tuple[list[_Pending], int, list[_Pending]]:
        now = time.perf_counter_ns()
        chosen: list[_Pending] = []
        expired: list[_Pending] = []
        total = 0
        for req in self._queue:
            if req.deadline_ns is not None and req.deadline_ns <= now:
                expired.append(req)
                continue
            if not chosen:
                chosen.append(req)
                total = req.batch
                if not self.info.batchable:
                    break
                continue
            if req.key == chosen[0].key and total + req.batch <= self._max_batch:
                chosen.append(req)
                total += req.batch
                if total >= self._max_batch:
                    break
        return chosen, total, expired

    def _execute(self, inst: Backend, batch: list[_Pending], me: _Pending) -> None:
        t0 = time.perf_counter_ns()
        wanted: list[str] = []
        for req in batch:
            wanted.extend(o for o in req.outputs if o not in wanted)
        try:
            if len(batch) == 1:
                inputs = batch[0].inputs
            else:
                inputs = {name: np.concatenate([r.inputs[name] for r in batch]) for name in batch[0].inputs}
            t1 = time.perf_counter_ns()
            hook = self._profile_hook
            if hook is not None:
                hook.before(inst)
            try:
                result = inst.run(inputs, wanted, n_requests=len(batch))
            finally:
                if hook is not None:
                    hook.after(inst, len(batch))
        except ServingError as exc:
            self._fail(batch, exc)
            return
        except Exception as exc:  # the framework's own errors
            self._fail(
                batch,
                ExecutionFailed(
                    f"model '{self.info.name}' failed on a batch of {sum(r.batch for r in batch)}:"
                    f" {type(exc).__name__}: {exc}"
                ),
            )
            return
        samples = sum(r.batch for r in batch)
        times = result.times
        if self.probes:
            self.stats.record_execution(samples, t1 - t0 + times.h2d_ns, times.compute_ns, times.d2h_ns)
        offset = 0
        for req in batch:
            if len(batch) == 1 or not self.info.batchable:
                req.result = {o: result.outputs[o] for o in req.outputs}
            else:
                end = offset + req.batch
                req.result = {o: result.outputs[o][offset:end] for o in req.outputs}
                offset = end
            if self.probes:
                req.timing = RequestTiming(
                    queue_ns=req.taken_ns - req.arrived_ns,
                    batch_assembly_ns=t1 - t0,
                    h2d_ns=times.h2d_ns,
                    compute_ns=times.compute_ns,
                    d2h_ns=times.d2h_ns,
                    batch_size=samples,
                    batch_requests=len(batch),
                    clock=times.clock,
                )
            req.finish()

    def _fail(self, batch: list[_Pending], error: ServingError) -> None:
        for req in batch:
            req.finish(error)


class ProfileHook:
    """Called around each model execution while a profiling window is open."""

    def before(self, inst: Backend) -> None:
        pass

    def after(self, inst: Backend, n_requests: int) -> None:
        pass
