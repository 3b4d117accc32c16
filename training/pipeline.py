"""`check`: run the checks on a model and its data, write the summary and the report."""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from training import provenance
from training.checks import CHECKS, CheckContext
from training.config import TrainConfig
from training.errors import SetupError
from training.summary import CheckResult, TrainingSummary, downsample


def history_of(ctx: CheckContext) -> dict[str, Any]:
    """The main run's series for the report and the JSON (long per-step series downsampled)."""
    res = ctx._main
    if res is None:
        return {}
    return {
        "epochs": [asdict(e) for e in res.epochs],
        "step_loss": downsample(res.step_loss, 500),
        "step_lr": downsample(res.step_lr, 500),
        "steps": res.steps,
        "grad_norm": {n: downsample(v, 200) for n, v in res.grad_norm.items()},
        "param_order": res.param_order,
        "train_seconds": res.train_seconds,
        "train_samples_per_s": res.train_samples / res.train_seconds if res.train_seconds else None,
        "nonfinite": asdict(res.nonfinite) if res.nonfinite else None,
    }


def run_checks(
    config: TrainConfig, checks: list[str] | None = None, seeds: int = 3, run_id: str | None = None
) -> tuple[TrainingSummary, CheckContext]:
    """Run the named checks (all nine by default) in order; a check that crashes is INVALID."""
    names = checks or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise SetupError(f"--checks: unknown {', '.join(unknown)}; expected some of {', '.join(CHECKS)}")
    if seeds < 2 and "seed_stability" in names:
        raise SetupError(f"--seeds {seeds}: the stability check needs at least 2")
    ctx = CheckContext(config, n_seeds=seeds)
    ctx.fresh()  # builds model and data once, so bad input fails here as a setup error
    results: list[CheckResult] = []
    for name in names:
        t0 = time.perf_counter()
        try:
            r = CHECKS[name](ctx)
        except SetupError:
            raise
        except Exception as e:  # the check could not measure; the rest can still run
            r = CheckResult(
                name,
                "INVALID",
                f"the check crashed: {type(e).__name__}: {e}",
                {"traceback": traceback.format_exc(limit=6)},
            )
        r.evidence["seconds"] = round(time.perf_counter() - t0, 3)
        results.append(r)
    p = ctx.prepared
    summary = TrainingSummary(
        kind="check",
        run_id=run_id or default_run_id("check", config.model),
        config=ctx.config.to_dict() | {"loss": p.loss_name},
        provenance=provenance.collect(p.device, sorted(ctx._seeds) or [ctx.config.seed]),
        checks=results,
        task={
            "kind": p.task.kind,
            "num_classes": p.task.num_classes,
            "loss": p.loss_name,
            "metric": p.metric.name if p.metric else None,
            "train_samples": len(p.train),  # type: ignore[arg-type]
            "val_samples": len(p.val),  # type: ignore[arg-type]
        },
        history=history_of(ctx),
    )
    summary.judge()
    return summary, ctx


def default_run_id(command: str, model: str) -> str:
    stem = Path(model.split(":")[0]).stem if ":" in model else model
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{command}-{stem}"


def run_folder(out: str, run_id: str) -> Path:
    folder = Path(out) / run_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def print_table(summary: TrainingSummary) -> None:
    width = max(len(c.name) for c in summary.checks) if summary.checks else 10
    for c in summary.checks:
        print(f"{c.status:<8}{c.name:<{width + 2}}{c.detail}")
    print(f"verdict: {summary.verdict} (exit {summary.exit_code})")


def run_check_command(
    config: TrainConfig, checks: list[str] | None, seeds: int, out: str, run: str | None
) -> int:
    from training import report

    summary, _ctx = run_checks(config, checks, seeds, run)
    folder = run_folder(out, summary.run_id)
    summary.write(folder)
    report.write_check_report(summary, folder)
    print_table(summary)
    print(f"results: {folder}/training_summary.json, report.md, report.html")
    return summary.exit_code
