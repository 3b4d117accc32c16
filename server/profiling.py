"""On-demand profiling: record the next N requests of a model in its framework's
profiler (torch.profiler or ONNX Runtime's) and write Chrome traces.

A window starts each instance's profile on the thread that runs the instance's
next batch, and stops it on the thread that runs the batch which completes the
N requests (or, for an instance idle by then, while holding it idle), so a
profile is never started or stopped under a running batch.

A profile is bounded three ways (ProfileLimits, from the server's settings):
the requests it may ask for (more is refused), the seconds it may record and
the bytes the server's RSS may grow meanwhile (either stops it, keeping what was
recorded); DELETE /profile cancels it the same way. One job per model at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from server.errors import AlreadyProfiling, InvalidInput, NoSuchJob
from server.scheduler import ProfileHook, Scheduler
from server.types import Backend, ProfileResult

if TYPE_CHECKING:
    from server.config import ServerSettings
    from server.repository import ModelRegistry

log = logging.getLogger("modelsoak.profiling")

# Finished jobs kept for GET /profile; older ones are forgotten (their files stay).
_JOBS_KEPT = 64


@dataclass(frozen=True)
class ProfileLimits:
    max_requests: int = 10_000
    max_s: float = 60.0
    max_bytes: int = 256 * 1024 * 1024

    @classmethod
    def of(cls, settings: ServerSettings) -> ProfileLimits:
        return cls(settings.profile_max_requests, settings.profile_max_s, settings.profile_max_bytes)


@dataclass
class ProfileJob:
    id: str
    model: str
    requests: int
    out_dir: Path
    started_at: float = field(default_factory=time.time)
    seen: int = 0
    state: str = "recording"  # recording -> done | failed | stopped (a cap, or cancelled)
    results: list[ProfileResult] = field(default_factory=list)
    error: str = ""
    stopped_because: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "requests": self.requests,
            "seen": self.seen,
            "state": self.state,
            "error": self.error,
            "stopped_because": self.stopped_because,
            "traces": [str(r.trace_path) for r in self.results],
            "summaries": [str(r.summary_path) for r in self.results if r.summary_path],
            "tool": sorted({r.tool for r in self.results}),
        }


class _Window(ProfileHook):
    def __init__(self, job: ProfileJob, scheduler: Scheduler, on_done: Any, max_bytes: int) -> None:
        self.job = job
        self.scheduler = scheduler
        self.on_done = on_done
        self._lock = threading.Lock()
        self._started: dict[int, Backend] = {}
        self._stopped: set[int] = set()
        self.closed = False
        self._finished = False
        self._process = psutil.Process()
        self._rss_limit = self._process.memory_info().rss + max_bytes
        self._max_bytes = max_bytes
        self.timer: threading.Timer | None = None

    def before(self, inst: Backend) -> None:
        with self._lock:
            if self.closed or id(inst) in self._started:
                return
            label = f"{self.job.id}-instance{len(self._started)}"
            try:
                inst.start_profile(self.job.out_dir, label)
            except Exception as exc:
                self._fail(f"starting the profiler failed: {exc}")
                return
            self._started[id(inst)] = inst

    def after(self, inst: Backend, n_requests: int) -> None:
        close_now = False
        with self._lock:
            if id(inst) not in self._started or id(inst) in self._stopped:
                return
            if not self.closed:
                self.job.seen += n_requests
                if self.job.seen >= self.job.requests:
                    self.closed = close_now = True
                elif self._process.memory_info().rss > self._rss_limit:
                    self._set_stopped(f"the server's RSS grew by {self._max_bytes} bytes "
                                      "(profile_max_bytes)")  # fmt: skip
                    close_now = True
            if self.closed:
                self._stop(inst)
        if close_now:
            # Instances that are idle now would otherwise stay in their profile.
            self.scheduler.with_idle_instances(self._stop_locked)
        self._maybe_done()

    def _set_stopped(self, why: str) -> None:
        # The state changes once the traces are written (_maybe_done), so a job
        # seen as stopped has its files.
        if not self.closed and self.job.state == "recording":
            self.job.stopped_because = why
        self.closed = True

    def _stop_locked(self, inst: Backend) -> None:
        with self._lock:
            if id(inst) in self._started and id(inst) not in self._stopped:
                self._stop(inst)
        self._maybe_done()

    def _stop(self, inst: Backend) -> None:
        self._stopped.add(id(inst))
        try:
            self.job.results.append(inst.stop_profile())
        except Exception as exc:
            self._fail(f"stopping the profiler failed: {exc}")

    def _fail(self, why: str) -> None:
        self.job.state, self.job.error = "failed", why
        self.closed = True
        log.error("profile %s: %s", self.job.id, why)

    def _maybe_done(self) -> None:
        with self._lock:
            if self._finished or not self.closed or set(self._started) - self._stopped:
                return
            self._finished = True
            if self.job.state == "recording":
                self.job.state = "stopped" if self.job.stopped_because else "done"
        if self.timer is not None:
            self.timer.cancel()
        self.on_done(self)

    def abort(self, why: str = "the server shut down") -> None:
        """Stop recording now (a cap, a cancel, shutdown): busy instances stop
        after their batch, idle ones at once; what was recorded is written."""
        with self._lock:
            self._set_stopped(why)
        self.scheduler.with_idle_instances(self._stop_locked)
        self._maybe_done()


class ProfileManager:
    """Opens profiling windows on models and keeps their jobs' status."""

    def __init__(self, registry: ModelRegistry, out_dir: Path, limits: ProfileLimits | None = None) -> None:
        self.registry = registry
        self.out_dir = out_dir
        self.limits = limits or ProfileLimits()
        self._lock = threading.Lock()
        self._jobs: list[ProfileJob] = []
        self._windows: dict[str, _Window] = {}
        self._count = 0

    def start(self, model_name: str, requests: int) -> ProfileJob:
        if requests < 1:
            raise InvalidInput(f"requests={requests}: a profile needs at least 1 request")
        cap = self.limits
        if requests > cap.max_requests:
            raise InvalidInput(
                f"requests={requests} exceeds the cap of {cap.max_requests} requests per profile "
                "(--profile-max-requests)"
            )
        model = self.registry.get(model_name)
        with self._lock:
            if model_name in self._windows:
                raise AlreadyProfiling(
                    f"model '{model_name}' is already being profiled; one profile per model at a "
                    f"time (DELETE /profile?model={model_name} cancels it)"
                )
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self._count += 1
            job = ProfileJob(f"{model_name}-{stamp}-{self._count}", model_name, requests, self.out_dir)
            job.out_dir.mkdir(parents=True, exist_ok=True)
            window = _Window(job, model.scheduler, self._done, cap.max_bytes)
            self._windows[model_name] = window
            self._jobs = [*self._jobs[-(_JOBS_KEPT - 1) :], job]
        why = f"{cap.max_s:g} s passed (profile_max_s)"
        window.timer = threading.Timer(cap.max_s, window.abort, (why,))
        window.timer.daemon = True
        window.timer.start()
        model.scheduler.set_profile_hook(window)
        log.info("profiling the next %d requests of %s into %s", requests, model_name, job.out_dir)
        return job

    def _done(self, window: _Window) -> None:
        window.scheduler.set_profile_hook(None)
        with self._lock:
            self._windows.pop(window.job.model, None)
        log.info("profile %s %s: %s", window.job.id, window.job.state, window.job.as_dict()["traces"])

    def jobs(self) -> list[ProfileJob]:
        with self._lock:
            return list(self._jobs)

    def cancel(self, model_name: str) -> ProfileJob:
        """Stop the model's recording profile (DELETE /profile?model=NAME)."""
        with self._lock:
            window = self._windows.get(model_name)
        if window is None:
            raise NoSuchJob(f"no profile of model '{model_name}' is recording")
        window.abort("cancelled (DELETE /profile)")
        return window.job

    def finish_all(self) -> None:
        with self._lock:
            windows = list(self._windows.values())
        for w in windows:
            w.abort()
