"""A worker that loses its master stops.

Locust's own worker waits 60 s without a heartbeat before it quits, and then
exits 0: a killed master leaves its workers loading the server for a minute and
a Kubernetes worker pod marked Complete. Here a worker that has heard nothing
from its master for `--master-timeout-s` seconds (Locust's master answers every
heartbeat, one a second) stops its users, writes what it measured to the
results folder when it can, and exits 4 (the run could not be measured).

With --termination-log PATH (Kubernetes: /dev/termination-log) the reason is
also written there, so the pod's termination message and the Job's status say
why the worker failed."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent

from loadtest.results import EXIT_INVALID

if TYPE_CHECKING:
    from locust.env import Environment

log = logging.getLogger("modelsoak.loadgen")
DEFAULT_TIMEOUT_S = 5.0
CHECK_EVERY_S = 0.5


def master_silent_for(runner: Any, now: float) -> float:
    """Seconds since the master's last heartbeat (0 before the first one: a
    worker that never reached its master is Locust's connect timeout's business)."""
    last = getattr(runner, "last_heartbeat_timestamp", None)
    return 0.0 if not last else now - float(last)


def own_termination_log(environment: Environment) -> str:
    """This process's own --termination-log, read at init: a worker's options
    are overwritten by the master's with its first spawn message, and the path
    belongs to the worker's pod, not the master's."""
    return str(getattr(environment.parsed_options, "termination_log", "") or "")


def write_termination_log(path: str, text: str) -> None:
    """Kubernetes keeps up to 4096 bytes of it as the container's termination message."""
    if not path:
        return
    try:
        Path(path).write_text(text.strip()[:4000] + "\n")
    except OSError as exc:  # the reason is in the log too
        log.error("could not write the termination message to %s: %s", path, exc)


def watch(environment: Environment, snapshot: Callable[[], str]) -> gevent.Greenlet:
    termination_log = own_termination_log(environment)
    return gevent.spawn(_loop, environment, snapshot, termination_log)


def _timeout(environment: Environment) -> float:
    # Read every time: the master's options (this one among them) reach the
    # worker with its first spawn message, after the worker started.
    value = getattr(environment.parsed_options, "master_timeout_s", None)
    return float(value) if value else DEFAULT_TIMEOUT_S


def _loop(environment: Environment, snapshot: Callable[[], str], termination_log: str) -> None:
    runner = environment.runner
    while True:
        gevent.sleep(CHECK_EVERY_S)
        silent = master_silent_for(runner, time.time())
        if silent > _timeout(environment):
            lost_master(environment, silent, snapshot, termination_log)
            return


def lost_master(
    environment: Environment, silent: float, snapshot: Callable[[], str], termination_log: str = ""
) -> None:
    runner = environment.runner
    assert runner is not None
    client_id = str(getattr(runner, "client_id", "worker"))
    log.error("no heartbeat from the master for %.1f s: stopping this worker (exit %d)", silent, EXIT_INVALID)
    try:
        runner.stop()
    except Exception:  # stopping the users must not keep the process alive
        log.exception("stopping the users failed")
    saved = _save(environment, client_id, silent, snapshot())
    if saved is not None:
        log.error("what this worker measured is in %s", saved)
    kept = f"what it measured is in {saved}" if saved is not None else "what it measured could not be saved"
    write_termination_log(
        termination_log,
        f"modelsoak worker {client_id} lost its master: no heartbeat for {silent:.1f} s "
        f"(--master-timeout-s {_timeout(environment):g}); it stopped sending and exited {EXIT_INVALID}; {kept}",
    )
    environment.process_exit_code = EXIT_INVALID
    runner.quit()


def _save(environment: Environment, client_id: str, silent: float, packed: str) -> Path | None:
    parsed = environment.parsed_options
    folder = Path(getattr(parsed, "results_dir", None) or "results")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in client_id)
    path = folder / f"lost-master-{safe}.json"
    doc = {"client_id": client_id, "master_silent_s": round(silent, 3), "at": time.time(), "snapshot": packed}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc) + "\n")
    except OSError as exc:  # a read-only pod: the log says what was lost
        log.error("could not write %s: %s", path, exc)
        return None
    return path
