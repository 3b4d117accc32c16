"""The bottleneck analysis: where a step's time went, and what to change.

Every suggestion is triggered by a measured number (a share of the step time,
the GPU's utilisation, the memory peak) and quotes it; nothing is suggested
from what a run did not measure.
"""

from __future__ import annotations

from typing import Any

# A share of the step time above which a phase is worth a suggestion.
DATA_SHARE = 0.10
H2D_SHARE = 0.10
OPTIMIZER_SHARE = 0.15
OTHER_SHARE = 0.15
COMPUTE_SHARE = 0.60
MEMORY_NEAR = 0.90  # of the plan's limit or the device's memory
NAMES = {
    "data": "data loading (waiting for the loader)",
    "h2d": "host-to-device copy",
    "forward": "forward",
    "backward": "backward",
    "optimizer": "optimizer step",
    "other": "other (loop overhead, device idle between launches)",
}


def analyse(s: dict[str, Any], opts: dict[str, Any], memory_target: float | None) -> dict[str, Any]:
    split = s["steps"].get("split")
    if not split:
        return {"shares": {}, "dominant": None, "suggestions": []}
    shares = {k: v["share"] for k, v in split.items()}
    cuda = s["device"].startswith("cuda")
    out: list[dict[str, str]] = []

    def say(trigger: str, text: str) -> None:
        out.append({"trigger": trigger, "suggestion": text})

    if shares["data"] >= DATA_SHARE:
        trig = f"data loading takes {shares['data']:.0%} of training time"
        say(
            trig, f"raise --num-workers (now {opts['num_workers']}) so batches are ready before the step asks"
        )
        if cuda and not opts["pin_memory"]:
            say(trig, "add --pin-memory so the copies can overlap with compute")
    if cuda and shares["h2d"] >= H2D_SHARE:
        trig = f"host-to-device copies take {shares['h2d']:.0%}"
        say(
            trig,
            "--pin-memory (non-blocking copies)"
            if not opts["pin_memory"]
            else "send smaller inputs (uint8 images, decode on the GPU) or keep the data on the device",
        )
    compute = shares["forward"] + shares["backward"]
    if compute >= COMPUTE_SHARE:
        trig = f"forward and backward take {compute:.0%}: compute-bound"
        if cuda and opts["amp"] is None:
            say(trig, "mixed precision: --amp bf16 (tensor cores, half the activation memory)")
        if cuda and not opts["channels_last"] and s.get("conv"):
            say(trig, "--channels-last for convolutions on tensor cores")
        if not opts["compile"]:
            say(trig, "--compile to fuse elementwise kernels")
        if not cuda:
            say(trig, "this runs on the CPU: a GPU is where the template's targets are meant to be met")
    if shares["optimizer"] >= OPTIMIZER_SHARE:
        say(
            f"the optimizer step takes {shares['optimizer']:.0%}",
            "a fused or foreach optimizer implementation, or --compile",
        )
    if shares["other"] >= OTHER_SHARE:
        say(
            f"{shares['other']:.0%} of the step is outside the measured phases (Python, launches)",
            f"a larger --batch-size (now {opts['batch_size']}) or --compile to launch fewer kernels",
        )
    g = s["gpu"]
    if g["measured"] and g["util_mean"] < 0.80:
        say(
            f"the GPU is busy {g['util_mean']:.0%} of the time (p10 {g['util_p10']:.0%})",
            f"feed it more: a larger --batch-size (now {opts['batch_size']}), more --num-workers",
        )
    peak, limit = s["memory"]["peak_bytes"], memory_target or s["memory"]["limit_bytes"]
    if peak is not None and limit and peak >= MEMORY_NEAR * limit:
        say(
            f"peak memory is {peak / limit:.0%} of the limit ({limit / 1e9:.2f} GB)",
            "a smaller --batch-size, --amp bf16, or activation checkpointing",
        )
    dominant = max(shares, key=lambda k: shares[k])
    return {
        "shares": shares,
        "dominant": dominant,
        "summary": f"{NAMES[dominant]} takes the largest share of a step ({shares[dominant]:.0%})",
        "suggestions": out,
    }
