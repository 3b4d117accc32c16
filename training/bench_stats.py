"""From recorded runs to the numbers a bench summary reports: step-time
percentiles, the step split, throughput per epoch, peak memory, GPU
utilisation, FLOPs and MFU, and time-to-accuracy over seeds (MLPerf's rule)."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from training.bench import RunResult
from training.bench_probes import memory_limit_bytes, peak_tflops
from training.steptimer import PHASES, StepRecords


def measured(steps: StepRecords, warmup: int) -> StepRecords:
    """The steps after the warm-up."""
    mask = np.arange(len(steps)) >= warmup
    return steps.select(mask)


def step_stats(steps: StepRecords) -> dict[str, Any]:
    if not len(steps):
        return {"count": 0}
    ms = steps.step_s * 1e3
    wall = float(steps.step_s.sum())
    split: dict[str, Any] = {}
    covered = 0.0
    for name in PHASES:
        col = steps.phase_s[name]
        col = col[~np.isnan(col)]
        total = float(col.sum()) * (len(steps) / max(1, len(col)))  # unresolved events: scale up
        covered += total
        split[name] = {"mean_ms": float(col.mean() * 1e3) if len(col) else None, "share": total / wall}
    split["other"] = {
        "mean_ms": max(0.0, wall - covered) / len(steps) * 1e3,
        "share": max(0.0, 1 - covered / wall),
    }
    return {
        "count": len(steps),
        "timing": steps.timing,
        "mean_ms": float(ms.mean()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "samples_per_s": float(steps.samples.sum() / wall),
        "split": split,
    }


def epochs_table(run: RunResult, warmup: int) -> list[dict[str, Any]]:
    out = []
    first = 0
    for e in run.epochs:
        idx = np.arange(first, first + e.steps)
        first += e.steps
        keep = idx[idx >= warmup]
        tput = float(run.steps.samples[keep].sum() / run.steps.step_s[keep].sum()) if len(keep) else None
        out.append(
            {
                "epoch": e.epoch,
                "wall_s": e.wall_s,
                "complete": e.complete,
                "steps": e.steps,
                "samples": e.samples,
                "samples_per_s": tput,
                "loss": e.loss,
                "accuracy": e.accuracy,
                "peak_allocated_bytes": e.peak_allocated_bytes,
                "peak_reserved_bytes": e.peak_reserved_bytes,
                "peak_rss_bytes": e.peak_rss_bytes,
            }
        )
    return out


def memory_stats(run: RunResult) -> dict[str, Any]:
    cuda = run.device.startswith("cuda")
    if cuda:
        peak = max((e.peak_allocated_bytes or 0.0) for e in run.epochs) if run.epochs else None
        reserved = max((e.peak_reserved_bytes or 0.0) for e in run.epochs) if run.epochs else None
        source = "torch.cuda.max_memory_allocated"
    else:
        peak, reserved, source = (
            (max(run.sampler.rss.v) if run.sampler.rss.v else None),
            None,
            "process RSS peak",
        )
    return {
        "peak_bytes": peak,
        "peak_reserved_bytes": reserved,
        "source": source,
        "limit_bytes": memory_limit_bytes(cuda),
    }


def gpu_stats(run: RunResult) -> dict[str, Any]:
    util = np.asarray(run.sampler.gpu_util.v)
    if not len(util):
        return {"measured": False, "reason": run.sampler.gpu_reason or "no NVML samples"}
    power = np.asarray(run.sampler.gpu_power_w.v)
    return {
        "measured": True,
        "util_mean": float(util.mean()),
        "util_p10": float(np.percentile(util, 10)),
        "power_mean_w": float(power.mean()) if len(power) else None,
        "power_max_w": float(power.max()) if len(power) else None,
        "samples": len(util),
    }


def flops_stats(
    run: RunResult, samples_per_s: float | None, device_name: str, precision: str, peak_override: float | None
) -> dict[str, Any]:
    per = run.flops_per_sample
    out: dict[str, Any] = {"per_sample": per, "precision": precision}
    if per is None or samples_per_s is None:
        out["reason"] = "FlopCounterMode could not count this model" if per is None else "no measured steps"
        return out
    achieved = per * samples_per_s / 1e12
    out["achieved_tflops"] = achieved
    peak, source = peak_override, "--peak-tflops"
    if peak is None and run.device.startswith("cuda"):
        peak, source = peak_tflops(device_name, precision), f"known-GPU table ({device_name}, {precision})"
    if peak is None:
        out["mfu_reason"] = f"no known peak for {device_name or run.device} ({precision}): pass --peak-tflops"
        return out
    out |= {"peak_tflops": peak, "peak_source": source, "mfu": achieved / peak}
    return out


def mlperf_mean(values: list[float]) -> tuple[float, str]:
    """MLPerf Training's time-to-train: mean with the fastest and slowest dropped (3+ values)."""
    if len(values) >= 3:
        kept = sorted(values)[1:-1]
        return statistics.fmean(
            kept
        ), f"mean of {len(kept)} of {len(values)} seeds (fastest and slowest dropped)"
    return statistics.fmean(values), f"mean of {len(values)} seed(s): fewer than 3, nothing dropped"


def accuracy_stats(runs: list[RunResult], target: float) -> dict[str, Any]:
    seeds: list[dict[str, Any]] = []
    for r in runs:
        hit = next((e for e in r.epochs if e.accuracy is not None and e.accuracy >= target), None)
        evaluated = [e for e in r.epochs if e.accuracy is not None]
        seeds.append(
            {
                "seed": r.seed,
                "epochs_run": len(r.epochs),
                "evaluated": bool(evaluated),
                "final_accuracy": evaluated[-1].accuracy if evaluated else None,
                "best_accuracy": max((e.accuracy or 0.0) for e in evaluated) if evaluated else None,
                "time_to_accuracy_s": hit.end_s if hit else None,
                "epochs_to_accuracy": hit.epoch if hit else None,
                "curve": [[e.end_s, e.accuracy] for e in evaluated],
            }
        )
    out: dict[str, Any] = {"target": target, "seeds": seeds}
    reached = [s for s in seeds if s["time_to_accuracy_s"] is not None]
    if reached and len(reached) == len(seeds):
        times = [s["time_to_accuracy_s"] for s in reached]
        epochs = [float(s["epochs_to_accuracy"]) for s in reached]
        out["time_to_accuracy_s"], out["rule"] = mlperf_mean(times)
        out["epochs_to_accuracy"], _ = mlperf_mean(epochs)
        out["spread"] = {
            "time_min_s": min(times),
            "time_max_s": max(times),
            "time_stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
            "epochs_min": min(epochs),
            "epochs_max": max(epochs),
        }
    return out


def timeline(run: RunResult, warmup: int, windows: int = 60) -> dict[str, Any]:
    """Throughput and the step split in windows over time, memory and accuracy over time (for plots)."""
    steps = measured(run.steps, warmup)
    out: dict[str, Any] = {"t_s": [], "samples_per_s": [], "split": {p: [] for p in (*PHASES, "other")}}
    if len(steps):
        for chunk in np.array_split(np.arange(len(steps)), min(windows, len(steps))):
            wall = float(steps.step_s[chunk].sum())
            out["t_s"].append(float(steps.start_s[chunk[-1]] + steps.step_s[chunk[-1]]))
            out["samples_per_s"].append(float(steps.samples[chunk].sum()) / wall)
            covered = 0.0
            for p in PHASES:
                share = float(np.nansum(steps.phase_s[p][chunk])) / wall
                covered += share
                out["split"][p].append(share)
            out["split"]["other"].append(max(0.0, 1 - covered))
    src = run.sampler.cuda_allocated if run.device.startswith("cuda") else run.sampler.rss
    stride = max(1, len(src.t) // 400)
    out["memory"] = {"t_s": src.t[::stride], "bytes": src.v[::stride]}
    out["gpu_util"] = {"t_s": run.sampler.gpu_util.t[::stride], "ratio": run.sampler.gpu_util.v[::stride]}
    return out
