"""The training targets of the performance-test template, a plan file that
overrides them, the metric / target / actual / status table, the verdict, and
the bottleneck analysis whose suggestions follow from the measured shares.

Plan file (YAML), in the load generator's style: one section, every key
optional, null switches a target off (then it is listed as not judged):

    training:
      max_epoch_time_s: 300        # every complete epoch
      min_gpu_utilization: 0.80    # NVML mean while training
      max_peak_memory_bytes: 8000000000  # CUDA max_memory_allocated, or process RSS on CPU
      target_accuracy: 0.85
      max_epochs_to_accuracy: 10
      max_time_to_accuracy_s: null
      min_samples_per_s: null
      max_step_p99_ms: null
      min_mfu: null

A row is PASS, FAIL, or NOT MEASURED (with the reason: "no GPU", a run too
short to finish an epoch); NOT MEASURED is never PASS. Exit codes as for the
load generator: 0 every judged target holds, 3 one fails, 4 one could not be
measured (or no step was measured), 2 setup error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from training.errors import SetupError

EXIT_PASS, EXIT_SETUP, EXIT_FAIL, EXIT_INVALID = 0, 2, 3, 4
PASS, FAIL, NOT_MEASURED = "PASS", "FAIL", "NOT MEASURED"

DEFAULTS: dict[str, float | None] = {
    "max_epoch_time_s": 300.0,
    "min_gpu_utilization": 0.80,
    "max_peak_memory_bytes": 8.0e9,
    "target_accuracy": 0.85,
    "max_epochs_to_accuracy": 10,
    "max_time_to_accuracy_s": None,
    "min_samples_per_s": None,
    "max_step_p99_ms": None,
    "min_mfu": None,
}


def load_plan(path: str | Path | None) -> dict[str, float | None]:
    plan = dict(DEFAULTS)
    if path is None:
        return plan
    p = Path(path)
    if not p.is_file():
        raise SetupError(f"--plan {path}: no such file")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise SetupError(f"--plan {path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict) or set(doc) - {"training"}:
        raise SetupError(f"--plan {path}: expected one top-level section `training:`, got {list(doc)}")
    section = doc.get("training") or {}
    if not isinstance(section, dict):
        raise SetupError(f"--plan {path}: `training:` must be a mapping of targets")
    for key, value in section.items():
        if key not in DEFAULTS:
            raise SetupError(
                f"--plan {path}: unknown key training.{key}; expected one of {', '.join(DEFAULTS)}"
            )
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise SetupError(f"--plan {path}: training.{key} = {value!r}; expected a number >= 0 or null")
        plan[key] = None if value is None else float(value)
    return plan


@dataclass
class Row:
    metric: str
    target: str
    actual: str
    status: str
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gb(b: float | None) -> str:
    return "n/a" if b is None else f"{b / 1e9:.3f} GB"


def _judge(ok: bool) -> str:
    return PASS if ok else FAIL


def checks(plan: dict[str, float | None], s: dict[str, Any]) -> list[Row]:
    """The template table from a summary (training/bench_report.summarise)."""
    rows: list[Row] = []
    if (lim := plan["max_epoch_time_s"]) is not None:
        full = [e for e in s["epochs"] if e["complete"]]
        if full:
            worst = max(e["wall_s"] for e in full)
            rows.append(
                Row("epoch time (slowest epoch)", f"< {lim:g} s", f"{worst:.2f} s", _judge(worst < lim))
            )
        else:
            rows.append(
                Row("epoch time", f"< {lim:g} s", "not measured: no complete epoch (--steps)", NOT_MEASURED)
            )
    if (lim := plan["min_gpu_utilization"]) is not None:
        g = s["gpu"]
        if g["measured"]:
            rows.append(
                Row(
                    "GPU utilisation (NVML mean)",
                    f"> {lim:.0%}",
                    f"{g['util_mean']:.1%} (p10 {g['util_p10']:.1%})",
                    _judge(g["util_mean"] > lim),
                )
            )
        else:
            rows.append(Row("GPU utilisation", f"> {lim:.0%}", f"not measured: {g['reason']}", NOT_MEASURED))
    if (lim := plan["max_peak_memory_bytes"]) is not None:
        m = s["memory"]
        if m["peak_bytes"] is None:
            rows.append(Row("peak training memory", f"< {_gb(lim)}", "not measured", NOT_MEASURED))
        else:
            rows.append(
                Row(
                    f"peak training memory ({m['source']})",
                    f"< {_gb(lim)}",
                    _gb(m["peak_bytes"]),
                    _judge(m["peak_bytes"] < lim),
                )
            )
    rows += _accuracy_rows(plan, s)
    rows += _optional_rows(plan, s)
    return rows


def _accuracy_rows(plan: dict[str, float | None], s: dict[str, Any]) -> list[Row]:
    target, within = plan["target_accuracy"], plan["max_epochs_to_accuracy"]
    if target is None:
        return []
    acc = s["accuracy"]
    metric = (
        f"{target:.0%} accuracy within {within:g} epochs" if within is not None else f"{target:.0%} accuracy"
    )
    label = f"<= {within:g} epochs" if within is not None else "reached"
    missing = [x for x in acc["seeds"] if x["epochs_to_accuracy"] is None]
    if not any(x["evaluated"] for x in acc["seeds"]):
        return [
            Row(
                metric,
                label,
                "not measured: no validation accuracy (--steps run or no classes)",
                NOT_MEASURED,
            )
        ]
    rows = []
    if missing:
        ran = min(x["epochs_run"] for x in missing)
        best = max(x["best_accuracy"] or 0.0 for x in missing)
        seeds = ", ".join(str(x["seed"]) for x in missing)
        if within is not None and ran < within:
            rows.append(
                Row(
                    metric,
                    label,
                    f"not measured: seed {seeds} ran {ran} epochs, best {best:.1%}",
                    NOT_MEASURED,
                )
            )
        else:
            rows.append(Row(metric, label, f"not reached by seed {seeds} (best {best:.1%})", FAIL))
    else:
        n = acc["epochs_to_accuracy"]
        ok = within is None or n <= within
        rows.append(Row(metric, label, f"{n:.2f} epochs ({acc['rule']})", _judge(ok)))
    if (lim := plan["max_time_to_accuracy_s"]) is not None:
        t = acc.get("time_to_accuracy_s")
        rows.append(
            Row(
                "time to accuracy",
                f"< {lim:g} s",
                f"{t:.2f} s" if t is not None else "target not reached",
                _judge(t is not None and t < lim),
            )
        )
    return rows


def _optional_rows(plan: dict[str, float | None], s: dict[str, Any]) -> list[Row]:
    rows = []
    st = s["steps"]
    if (lim := plan["min_samples_per_s"]) is not None:
        v = st.get("samples_per_s")
        rows.append(
            Row(
                "throughput",
                f">= {lim:g} samples/s",
                f"{v:.1f} samples/s" if v else "n/a",
                _judge(bool(v) and v >= lim),
            )
        )
    if (lim := plan["max_step_p99_ms"]) is not None:
        v = st.get("p99_ms")
        rows.append(
            Row("step time p99", f"< {lim:g} ms", f"{v:.2f} ms" if v else "n/a", _judge(bool(v) and v < lim))
        )
    if (lim := plan["min_mfu"]) is not None:
        mfu = s["flops"].get("mfu")
        if mfu is None:
            why = s["flops"].get("mfu_reason") or s["flops"].get("reason", "")
            rows.append(Row("MFU", f">= {lim:.0%}", f"not measured: {why}", NOT_MEASURED))
        else:
            rows.append(Row("MFU", f">= {lim:.0%}", f"{mfu:.1%}", _judge(mfu >= lim)))
    return rows


def verdict(rows: list[Row], steps_measured: int) -> tuple[str, int]:
    if steps_measured == 0:
        return "INVALID", EXIT_INVALID
    if any(r.status == FAIL for r in rows):
        return "FAIL", EXIT_FAIL
    if any(r.status == NOT_MEASURED for r in rows):
        return "INCOMPLETE", EXIT_INVALID
    return "PASS", EXIT_PASS


def not_judged(plan: dict[str, float | None]) -> list[str]:
    return [k for k, v in plan.items() if v is None]
