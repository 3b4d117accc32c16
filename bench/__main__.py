"""`make bench` / `python -m bench [NAME ...]`: run the benchmarks, print a table
of ratios against their goals, and write bench/results/<name>.json.

Exits 1 when any ratio misses its goal (and names each one), 0 otherwise."""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import client_cost, exporters, loadgen, master, native_client, server, streams, training

RESULTS = Path(__file__).resolve().parent / "results"

BENCHMARKS: dict[str, Callable[..., dict[str, Any]]] = {
    "server_overhead": server.overhead_and_probes,
    "server_batching": server.batching,
    "loadgen_overhead": loadgen.generator_overhead,
    "loadgen_memory": loadgen.generator_memory,
    "loadgen_client_cost": client_cost.client_cost,
    "loadgen_native_client": native_client.native_client_cost,
    "exporters_metrics_cost": exporters.metrics_cost,
    "training": training.overhead,
    "master": master.scaling,
    "loadgen_streams": streams.accuracy,
}


def _environment() -> dict[str, Any]:
    import os

    import onnxruntime
    import torch

    return {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("names", nargs="*", help=f"which to run (default all): {', '.join(BENCHMARKS)}")
    p.add_argument("--duration", type=float, help="master: seconds of soak for each N (default 60)")
    p.add_argument("--workers", help="master: simulated worker counts, comma-separated (default 10,100,500)")
    args = p.parse_args()
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    RESULTS.mkdir(exist_ok=True)
    env = _environment()
    rows = []
    for name in names:
        print(f"== {name} ...", flush=True)
        kwargs: dict[str, Any] = {}
        if name == "master" and args.duration:
            kwargs["duration"] = args.duration
        if name == "master" and args.workers:
            kwargs["workers"] = tuple(int(n) for n in args.workers.split(","))
        result = {"environment": env, **BENCHMARKS[name](**kwargs)}
        # A run with other settings than the default keeps the default's file.
        out = result.pop("result_name", name)
        (RESULTS / f"{out}.json").write_text(json.dumps(result, indent=2) + "\n")
        for key, goal in result.get("goals", {}).items():
            value = result[key]
            rows.append((name, key, value, goal, "PASS" if value >= goal else "BELOW GOAL"))
        print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2), flush=True)
    print("\nbenchmark          ratio                     measured   goal    status")
    for name, key, value, goal, status in rows:
        print(f"{name:<18} {key:<25} {value:8.3f}   >= {goal:.2f}  {status}")
    missed = [(name, key, value, goal) for name, key, value, goal, status in rows if status != "PASS"]
    for name, key, value, goal in missed:
        print(f"missed: {name} {key} = {value:.3f}, goal >= {goal:.2f}")
    # A benchmark run is a check: a ratio under its goal fails the command.
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
