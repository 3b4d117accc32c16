"""Gradient flow: every trainable parameter gets a gradient, early layers are not starved
(vanishing), norms do not explode or go non-finite; update-to-weight ratios per layer.

Norms are compared as RMS (norm / sqrt(numel)), so a big layer and a small one are comparable.
"""

from __future__ import annotations

import math
import statistics

from training.checks.context import CheckContext
from training.runner import TrainResult
from training.summary import CheckResult

VANISH_FAIL = 1e-3  # first layer's RMS gradient below this fraction of the last layer's
VANISH_WARN = 1e-2
EXPLODE_FACTOR = 1e4  # global norm this many times its start
UPDATE_RATIO_HIGH = 0.1  # a weight matrix moving 10 % per step


def _rms(res: TrainResult, name: str) -> float:
    norms = [v for v in res.grad_norm[name] if math.isfinite(v)]
    return statistics.median(norms) / math.sqrt(res.param_numel[name]) if norms else 0.0


def _median_update(res: TrainResult, name: str) -> float:
    ups = [u for u in res.update_ratio.get(name, []) if math.isfinite(u)]
    return statistics.median(ups) if ups else 0.0


def no_gradient(res: TrainResult) -> list[str]:
    """Parameters whose gradient was None or exactly zero on every recorded step."""
    return [n for n in res.param_order if res.grad_norm[n] and all(v == 0.0 for v in res.grad_norm[n])]


def global_norms(res: TrainResult) -> list[float]:
    return [math.sqrt(sum(res.grad_norm[n][i] ** 2 for n in res.param_order)) for i in range(res.steps)]


def _layers(res: TrainResult) -> list[dict[str, object]]:
    out = []
    for n in res.param_order:
        ups = [u for u in res.update_ratio.get(n, []) if math.isfinite(u)]
        out.append(
            {
                "param": n,
                "numel": res.param_numel[n],
                "grad_norm_median": statistics.median(res.grad_norm[n]) if res.grad_norm[n] else None,
                "grad_rms_median": _rms(res, n),
                "no_grad_steps": res.grad_none_steps.get(n, 0),
                "update_ratio_median": statistics.median(ups) if ups else None,
            }
        )
    return out


def check_gradient_flow(ctx: CheckContext) -> CheckResult:
    res = ctx.main
    ev: dict[str, object] = {"steps": res.steps, "layers": _layers(res)}
    fails: list[str] = []
    warns: list[str] = []
    if res.nonfinite is not None and res.nonfinite.kind == "gradient":
        nf = res.nonfinite
        ev |= {"nonfinite_param": nf.where, "step": nf.step}
        fails.append(f"gradient of {nf.where} is non-finite at step {nf.step}")
    dead = no_gradient(res)
    if dead:
        learned = res.final.val_metric
        ev["no_gradient_params"] = dead
        more = f" while the rest trains (val {res.metric} {learned:.3g})" if learned is not None else ""
        fails.append(
            f"{len(dead)} trainable parameters get no gradient (None or zero on all "
            f"{res.steps} steps): {', '.join(dead[:6])}{more}"
        )
    weights = [n for n in res.param_order if n not in dead and _rms(res, n) > 0 and res.param_ndim[n] >= 2]
    if len(weights) >= 2:
        first, last = weights[0], weights[-1]
        ratio = _rms(res, first) / _rms(res, last)
        ev |= {"first_layer": first, "last_layer": last, "first_to_last_ratio": ratio}
        if ratio < VANISH_WARN:
            starved = [n for n in weights if _rms(res, n) / _rms(res, last) < VANISH_FAIL]
            ev["vanishing_layers"] = starved
            msg = (
                f"vanishing gradients: {first}'s RMS gradient is {ratio:.2g} of {last}'s "
                f"({len(starved)} layers below {VANISH_FAIL:g})"
            )
            (fails if ratio < VANISH_FAIL else warns).append(msg)
    norms = global_norms(res)
    if len(norms) >= 2:
        start = statistics.median(norms[: min(3, len(norms) - 1)])
        peak_step = max(range(len(norms)), key=lambda i: norms[i])
        ev |= {"global_norm_start": start, "global_norm_peak": norms[peak_step], "peak_step": peak_step}
        if start > 0 and norms[peak_step] > EXPLODE_FACTOR * start:
            fails.append(
                f"exploding gradients: global norm {norms[peak_step]:.3g} at step {peak_step}, "
                f"{norms[peak_step] / start:.2g}x its start ({start:.3g})"
            )
    big = [
        n for n in res.param_order if res.param_ndim[n] >= 2 and _median_update(res, n) > UPDATE_RATIO_HIGH
    ]
    if big:
        warns.append(
            f"update-to-weight ratio above {UPDATE_RATIO_HIGH:g} per step (healthy ~1e-3): "
            f"{', '.join(map(str, big[:6]))}"
        )
    if fails:
        return CheckResult("gradient_flow", "FAIL", "; ".join(fails + warns), ev)
    if warns:
        return CheckResult("gradient_flow", "WARN", "; ".join(warns), ev)
    ratio_txt = (
        f", first/last RMS gradient {ev['first_to_last_ratio']:.2g}" if "first_to_last_ratio" in ev else ""
    )
    return CheckResult(
        "gradient_flow",
        "PASS",
        f"all {len(res.param_order)} trainable parameters get finite gradients{ratio_txt}",
        ev,
    )
