"""`python -m bench._pinned CPU MODULE [ARGS ...]`: run a module on one CPU core.

The affinity is set before the module starts any thread, so every thread it
makes (grpc's pollers, thread pools) inherits the one core."""

from __future__ import annotations

import os
import runpy
import sys


def main() -> None:
    cpu, module, *args = sys.argv[1:]
    os.sched_setaffinity(0, {int(cpu)})
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
