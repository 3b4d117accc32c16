"""Data-parallel bench runs under torchrun, per-rank records merged into one
report, and scaling efficiency.

Under `torchrun --nproc-per-node N -m training.bench_cli bench ...` every
process reads RANK / WORLD_SIZE / LOCAL_RANK from the environment torchrun
sets, joins the process group (gloo on CPU, NCCL on CUDA, one GPU per local
rank), trains its shard (DistributedSampler) with DistributedDataParallel, and
summarises its own steps. Rank 0 gathers every rank's summary and measured
steps and merges them: throughput is the sum of the ranks' samples/s, step-time
percentiles are over all ranks' steps pooled, peak memory is the largest rank's.

Scaling efficiency = samples/s with N processes / (N x samples/s with one),
both measured by this harness on the same model, data and per-process batch:
`modelsoak-train bench --nproc-per-node N` runs torchrun with 1 and then N
processes and reports it; a run already under torchrun takes the one-process
figure from `--scaling-baseline summary.json`.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from training.bench_stats import step_stats
from training.errors import SetupError
from training.steptimer import StepRecords


def world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun with more than one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    return int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0"))


def setup(device: str) -> tuple[str, tuple[int, int] | None]:
    """Join the process group; returns the device this rank uses and (rank, world size)."""
    w = world()
    if w is None:
        return device, None
    rank, size, local = w
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    elif device == "auto":
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device, (rank, size)


def teardown() -> None:
    """Leave the process group once every rank is done with it.

    The barrier keeps a rank from closing its connections while a peer is
    still in a collective (a closed peer socket can abort gloo's threads).
    """
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError as e:  # a peer already failed: its own error is the one to report
            print(f"modelsoak-train: leaving the process group without its peers: {e}", file=sys.stderr)
        dist.destroy_process_group()


def gather(obj: Any) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (None elsewhere)."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out if dist.get_rank() == 0 else None


def broadcast_int(value: int) -> int:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return int(box[0])


def merge(summaries: list[dict[str, Any]], steps: list[StepRecords]) -> dict[str, Any]:
    """One summary from every rank's (rank order); judged again by the caller."""
    s = copy.deepcopy(summaries[0])
    pooled = StepRecords(
        np.concatenate([r.start_s for r in steps]),
        np.concatenate([r.step_s for r in steps]),
        {k: np.concatenate([r.phase_s[k] for r in steps]) for k in steps[0].phase_s},
        np.concatenate([r.samples for r in steps]),
        steps[0].timing,
    )
    st = step_stats(pooled)
    if st.get("count"):
        st["samples_per_s"] = sum(x["steps"].get("samples_per_s", 0.0) for x in summaries)
    s["steps"] = st
    s["world_size"] = len(summaries)
    for i, e in enumerate(s["epochs"]):
        per = [x["epochs"][i] for x in summaries if i < len(x["epochs"])]
        e["wall_s"] = max(p["wall_s"] for p in per)
        e["samples"] = sum(p["samples"] for p in per)
        rates = [p["samples_per_s"] for p in per]
        e["samples_per_s"] = sum(rates) if all(rates) else None
        e["peak_rss_bytes"] = max(p["peak_rss_bytes"] for p in per)
        if e["peak_allocated_bytes"] is not None:
            e["peak_allocated_bytes"] = max(p["peak_allocated_bytes"] or 0.0 for p in per)
    peaks = [x["memory"]["peak_bytes"] for x in summaries if x["memory"]["peak_bytes"] is not None]
    s["memory"]["peak_bytes"] = max(peaks) if peaks else None
    gpus = [x["gpu"] for x in summaries if x["gpu"]["measured"]]
    if gpus:
        s["gpu"]["util_mean"] = float(np.mean([g["util_mean"] for g in gpus]))
        s["gpu"]["util_p10"] = min(g["util_p10"] for g in gpus)
        s["gpu"]["power_mean_w"] = sum(g["power_mean_w"] or 0.0 for g in gpus)
    f = s["flops"]
    if f.get("per_sample") and st.get("samples_per_s"):
        f["achieved_tflops"] = f["per_sample"] * st["samples_per_s"] / 1e12
        if f.get("peak_tflops"):
            f["mfu"] = f["achieved_tflops"] / (f["peak_tflops"] * len(summaries))
    s["nonfinite_loss_steps"] = sum(x["nonfinite_loss_steps"] for x in summaries)
    s["ranks"] = [
        {
            "rank": i,
            "samples_per_s": x["steps"].get("samples_per_s"),
            "p50_ms": x["steps"].get("p50_ms"),
            "p99_ms": x["steps"].get("p99_ms"),
            "shares": {k: v["share"] for k, v in x["steps"].get("split", {}).items()},
            "peak_bytes": x["memory"]["peak_bytes"],
        }
        for i, x in enumerate(summaries)
    ]
    return s


def efficiency(n_procs: float, n: int, one_proc: float) -> dict[str, Any]:
    return {
        "world_size": n,
        "samples_per_s": n_procs,
        "one_process_samples_per_s": one_proc,
        "efficiency": n_procs / (n * one_proc) if one_proc > 0 else 0.0,
    }


def baseline_rate(path: str) -> float:
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
        return float(doc["steps"]["samples_per_s"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SetupError(
            f"--scaling-baseline {path}: expected a bench summary.json with steps.samples_per_s ({e})"
        ) from e


def launch(
    nproc: int, argv: list[str], out_dir: Path, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """Run the bench under torchrun with `nproc` processes on this host; (exit code, summary)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "training.bench_cli",
        "bench",
        *argv,
        "--out",
        str(out_dir),
    ]
    proc = subprocess.run(cmd, env=env, check=False)
    summary = out_dir / "summary.json"
    if not summary.exists():
        raise SetupError(
            f"torchrun with {nproc} process(es) wrote no summary (exit {proc.returncode}): {' '.join(cmd)}"
        )
    return proc.returncode, json.loads(summary.read_text())
