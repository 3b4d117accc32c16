"""`python -m bench._ablated [--no-breakdown] [--no-health] [--direct|--no-model|--gil-only] SERVER_FLAGS ...`:
our server with parts taken out, for the elimination runs of bench/server.py.

- --no-breakdown: no timing breakdown in the response `parameters` map (the
  probes still time and count every request);
- --no-health: no grpc.health.v1 and no reflection services (our server installs
  no interceptors, so there are none to take out);
- --direct: the model called inline in the data plane, with no scheduler (no
  queue, no batcher, no busy bookkeeping);
- --no-model: no scheduler and no model call either: the data plane returns the
  decoded input as the output (decode, data plane and encode remain);
- --gil-only: as --no-model, plus one release of the GIL per request
  (time.sleep(0)), which is what a model call into ONNX Runtime also does.

The rest of the flags are modelsoak-server's.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence

import numpy as np

from server.app import InferenceServer, Parts
from server.cli import build_parser, serve, settings_from_args
from server.config import ServerSettings
from server.core import ServerCore
from server.scheduler import Scheduler
from server.stats import RequestTiming

Outcome = tuple[dict[str, np.ndarray], RequestTiming | None]


class DirectScheduler(Scheduler):
    """Runs each request on the first instance at once, on the loop: the model
    called inline, nothing of the scheduler's own work."""

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        batch: int,
        outputs: Sequence[str],
        timeout_s: float | None = None,
    ) -> Outcome:
        return self._instances[0].run(inputs, outputs, 1).outputs, None


class NoModelScheduler(Scheduler):
    """No model call: the (identity) model's output is its input."""

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        batch: int,
        outputs: Sequence[str],
        timeout_s: float | None = None,
    ) -> Outcome:
        return {outputs[0]: next(iter(inputs.values()))}, None


class GilOnlyScheduler(Scheduler):
    """No model call, but the GIL released once per request as a model call does."""

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        batch: int,
        outputs: Sequence[str],
        timeout_s: float | None = None,
    ) -> Outcome:
        time.sleep(0)  # releases the GIL (and lets a thread waiting for it run)
        return {outputs[0]: next(iter(inputs.values()))}, None


def _core(scheduler: type[Scheduler] | None, settings: ServerSettings) -> ServerCore:
    core = ServerCore(settings)
    if scheduler is not None:
        core.scheduler_class = scheduler  # before prepare_all() makes the models' schedulers
    return core


def main() -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--no-breakdown", action="store_true")
    own.add_argument("--no-health", action="store_true")
    model = own.add_mutually_exclusive_group()
    model.add_argument("--direct", action="store_const", dest="scheduler", const=DirectScheduler)
    model.add_argument("--no-model", action="store_const", dest="scheduler", const=NoModelScheduler)
    model.add_argument("--gil-only", action="store_const", dest="scheduler", const=GilOnlyScheduler)
    mine, rest = own.parse_known_args()
    args = build_parser().parse_args(rest)
    settings = settings_from_args(args)
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr)
    parts = Parts(breakdown_in_response=not mine.no_breakdown, health_and_reflection=not mine.no_health)
    server = InferenceServer(settings, parts, _core(mine.scheduler, settings))
    return asyncio.run(serve(settings, args, server))


if __name__ == "__main__":
    raise SystemExit(main())
