"""On-demand profiling: record the next N requests of a model in its framework's
profiler (torch.profiler or ONNX Runtime's) and write Chrome traces.

A window starts each instance's profile on the thread that runs the instance's
next batch, and stops it on the thread that runs the batch which completes the
N requests (or, for an instance idle by then, while holding it idle), so a
profile is never started or stopped under a running batch.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.errors import InvalidInput
from server.scheduler import ProfileHook, Scheduler
from server.types import Backend, ProfileResult

if TYPE_CHECKING:
    from server.repository import ModelRegistry

log = logging.getLogger("modelsoak.profiling")


@dataclass
class ProfileJob:
    id: str
    model: str
    requests: int
    out_dir: Path
    started_at: float = field(default_factory=time.time)
    seen: int = 0
    state: str = "recording"  # recording -> done | failed
    results: list[ProfileResult] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "requests": self.requests,
            "seen": self.seen,
            "state": self.state,
            "error": self.error,
            "traces": [str(r.trace_path) for r in self.results],
            "summaries": [str(r.summary_path) for r in self.results if r.summary_path],
            "tool": sorted({r.tool for r in self.results}),
        }


class _Window(ProfileHook):
    def __init__(self, job: ProfileJob, scheduler: Scheduler, on_done: Any) -> None:
        self.job = job
        self.scheduler = scheduler
        self.on_done = on_done
        self._lock = threading.Lock()
        self._started: dict[int, Backend] = {}
        self._stopped: set[int] = set()
        self.closed = False

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
            if self.closed:
                self._stop(inst)
        if close_now:
            # Instances that are idle now would otherwise stay in their profile.
            self.scheduler.with_idle_instances(self._stop_locked)
            self._maybe_done()

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
            if not self.closed or set(self._started) - self._stopped:
                return
            if self.job.state == "recording":
                self.job.state = "done"
        self.on_done(self)

    def abort(self) -> None:
        """Server shutdown: stop whatever still records."""
        with self._lock:
            self.closed = True
        self.scheduler.with_idle_instances(self._stop_locked)


class ProfileManager:
    """Opens profiling windows on models and keeps their jobs' status."""

    def __init__(self, registry: ModelRegistry, out_dir: Path) -> None:
        self.registry = registry
        self.out_dir = out_dir
        self._lock = threading.Lock()
        self._jobs: list[ProfileJob] = []
        self._windows: dict[str, _Window] = {}

    def start(self, model_name: str, requests: int) -> ProfileJob:
        if requests < 1:
            raise InvalidInput(f"requests={requests}: a profile needs at least 1 request")
        model = self.registry.get(model_name)
        with self._lock:
            if model_name in self._windows:
                raise InvalidInput(f"model '{model_name}' is already being profiled")
            stamp = time.strftime("%Y%m%d-%H%M%S")
            job = ProfileJob(f"{model_name}-{stamp}-{len(self._jobs)}", model_name, requests, self.out_dir)
            job.out_dir.mkdir(parents=True, exist_ok=True)
            window = _Window(job, model.scheduler, self._done)
            self._windows[model_name] = window
            self._jobs.append(job)
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

    def finish_all(self) -> None:
        with self._lock:
            windows = list(self._windows.values())
        for w in windows:
            w.abort()
