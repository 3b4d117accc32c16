"""Server benchmarks (issue: the inference server), each a ratio measured in one run.

- overhead: our server with the `identity` model vs bare grpcio echo servicers
  (bench/_echo.py), same client (bench/_client.py), same request, each server
  pinned to one core and the client to another: >= 0.85 of the grpc.aio echo,
  >= 0.60 of the thread-pool grpc.server echo;
- where the rest goes, by elimination: the same server with one more part taken
  out at each step (bench/_ablated.py): the breakdown in the response
  `parameters`, then health and reflection, then the per-request statistics
  (probes off), then the scheduler (the model called inline), then the model
  call itself; each step's throughput as a ratio to the grpc.aio echo, and
  beside the last one a GIL release in place of the model call;
- probes: probes and statistics on vs off (goal >= 0.97);
- batching: 32 concurrent batch-1 clients on a compute-bound built-in model vs
  the same ONNX model run offline at batch 32 in ONNX Runtime (goal >= 0.80).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from bench._procs import interleaved, load, median, our_server, process_with_port

# The elimination steps, in order: each takes one more part out of the server.
STEPS: dict[str, tuple[str, ...]] = {
    "ours": (),
    "no_breakdown": ("--no-breakdown",),
    "no_health_reflection": ("--no-breakdown", "--no-health"),
    "no_statistics": ("--no-breakdown", "--no-health", "--no-probes"),
    "model_inline": ("--no-breakdown", "--no-health", "--no-probes", "--direct"),
    "no_model_call": ("--no-breakdown", "--no-health", "--no-probes", "--no-model"),
}
# Beside the last step: no model call, but the GIL released once per request, as
# ONNX Runtime's run does; it shows what the model call costs on one core.
GIL_ONLY = ("--no-breakdown", "--no-health", "--no-probes", "--gil-only")


def _cpus() -> tuple[int, int | None]:
    """The server's core and the client's (None: one core, nothing to pin apart)."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) > 1 else (cpus[0], None)


@contextlib.contextmanager
def _client_on(cpu: int | None) -> Iterator[None]:
    """Pin this process (and so the load clients it starts) to `cpu`."""
    before = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _pinned(cpu: int, module: str, *args: str) -> contextlib.AbstractContextManager[dict[str, Any]]:
    return process_with_port([sys.executable, "-m", "bench._pinned", str(cpu), module, *args])


def _ours(cpu: int, *flags: str) -> contextlib.AbstractContextManager[dict[str, Any]]:
    server_flags = (
        "--model",
        "identity",
        "--max-queue-delay-us",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
    )
    return _pinned(cpu, "bench._ablated", *flags, *server_flags)


def overhead_and_probes(
    duration: float = 3.0, rounds: int = 5, concurrency: int = 16, shape: str = "1x256"
) -> dict[str, Any]:
    server_cpu, client_cpu = _cpus()
    with contextlib.ExitStack() as stack:
        ports = {
            "echo": stack.enter_context(_pinned(server_cpu, "bench._echo")),
            "echo_aio": stack.enter_context(_pinned(server_cpu, "bench._echo", "--aio")),
            "ours_no_probes": stack.enter_context(_ours(server_cpu, "--no-probes")),
            **{name: stack.enter_context(_ours(server_cpu, *flags)) for name, flags in STEPS.items()},
            "gil_release_only": stack.enter_context(_ours(server_cpu, *GIL_ONLY)),
        }
        stack.enter_context(_client_on(client_cpu))
        samples: dict[str, list[dict[str, Any]]] = {k: [] for k in ports}

        def run(name: str) -> float:
            result = load(ports[name]["grpc"], "identity", shape, concurrency, duration)
            samples[name].append(result)
            return float(result["rps"])

        rps = interleaved({name: functools.partial(run, name) for name in ports}, rounds)
    med = {k: median(v) for k, v in rps.items()}

    def paired(a: str, b: str) -> float:
        """Median over rounds of a's throughput over b's in the same round: a
        machine whose load drifts between rounds moves both alike."""
        return median([x / y for x, y in zip(rps[a], rps[b], strict=True)])

    return {
        "setup": {
            "duration_s": duration,
            "rounds": rounds,
            "concurrency": concurrency,
            "shape": shape,
            "server_cpu": server_cpu,
            "client_cpu": client_cpu,
        },
        "rps": rps,
        "median_rps": med,
        "p50_ms": {k: median([s["p50_ms"] for s in v]) for k, v in samples.items()},
        "errors": {k: sum(sum(s["errors"].values()) for s in v) for k, v in samples.items()},
        "ratio_vs_echo": paired("ours", "echo_aio"),
        "ratio_vs_threadpool_echo": paired("ours", "echo"),
        "ratio_probes_on_off": paired("ours", "ours_no_probes"),
        # Each elimination step's throughput over the grpc.aio echo's; the
        # difference between two neighbours is what the part taken out costs.
        "elimination_vs_echo_aio": {name: paired(name, "echo_aio") for name in (*STEPS, "gil_release_only")},
        "goals": {"ratio_vs_echo": 0.85, "ratio_vs_threadpool_echo": 0.60, "ratio_probes_on_off": 0.97},
    }


def _offline(model: str, shape: tuple[int, ...], duration: float) -> float:
    import onnxruntime as ort

    from server.builtin import BUILTIN_MODELS

    path = BUILTIN_MODELS[model].build().onnx_path()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sess.run(None, {"INPUT0": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < duration:
        sess.run(None, {"INPUT0": x})
        n += 1
    return n * shape[0] / (time.perf_counter() - t0)


def batching(
    model: str = "resnet18", duration: float = 15.0, rounds: int = 2, clients: int = 32, delay_us: int = 50000
) -> dict[str, Any]:
    dims = {"resnet18": (3, 224, 224), "mlp": (256,)}[model]
    with our_server(
        "--model", model, "--max-batch-size", str(clients), "--max-queue-delay-us", str(delay_us)
    ) as srv:
        shape = "x".join(str(d) for d in (1, *dims))
        load(srv["grpc"], model, shape, clients, 2.0)  # warm the server's batch-32 path
        rates = interleaved(
            {
                "offline_batch32": lambda: _offline(model, (clients, *dims), duration),
                "server_32_clients": lambda: float(load(srv["grpc"], model, shape, clients, duration)["rps"]),
            },
            rounds,
        )
    offline_b1 = _offline(model, (1, *dims), duration / 2)
    med = {k: median(v) for k, v in rates.items()}
    return {
        "setup": {
            "model": model,
            "clients": clients,
            "max_queue_delay_us": delay_us,
            "duration_s": duration,
            "rounds": rounds,
        },
        "samples_per_s": rates,
        "median_samples_per_s": med,
        "offline_batch1_samples_per_s": offline_b1,
        "ratio_server_vs_offline": med["server_32_clients"] / med["offline_batch32"],
        "goals": {"ratio_server_vs_offline": 0.80},
    }
