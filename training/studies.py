"""Studies that train for real: an LR x batch-size sweep, optimizers side by side, models side
by side. Cells run in parallel worker processes (one torch thread each) where cores allow;
each worker rebuilds model and data from their specs, so nothing but strings crosses over."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from typing import Any

from training.config import TrainConfig
from training.errors import InvalidRun, SetupError


@dataclass
class CellResult:
    """One real training run of a study."""

    params: dict[str, Any]  # what the study varied: lr, batch_size, optimizer, model
    seed: int
    val_loss: float
    val_metric: float | None
    metric: str | None
    seconds: float  # wall time of the training, in the worker
    steps: int
    samples_per_s: float
    diverged_at_step: int | None
    val_metric_per_epoch: list[float | None] = field(default_factory=list)
    val_loss_per_epoch: list[float] = field(default_factory=list)
    epoch_end_seconds: list[float] = field(default_factory=list)  # cumulative training time
    pid: int = 0  # the process that trained it


def _worker_init() -> None:
    import importlib

    import torch

    # Imports (torch, scikit-learn) done before the first cell's clock starts.
    importlib.import_module("training.runner")
    importlib.import_module("sklearn.datasets")
    # Cells share the cores: one intra-op thread each instead of every worker spinning on all.
    torch.set_num_threads(1)


def train_cell(cfg: TrainConfig, params: dict[str, Any]) -> CellResult:
    """Train one cell (in whatever process calls it) and keep what the study reports."""
    from training.runner import train

    t0 = time.perf_counter()
    res = train(cfg, record_updates=False, keep_params=False)
    seconds = time.perf_counter() - t0
    cum, elapsed = [], 0.0
    for e in res.epochs[1:]:
        elapsed += e.seconds
        cum.append(elapsed)
    return CellResult(
        params,
        cfg.seed,
        res.final.val_loss,
        res.final.val_metric,
        res.metric,
        seconds,
        res.steps,
        res.train_samples / res.train_seconds if res.train_seconds else 0.0,
        res.nonfinite.step if res.nonfinite else None,
        [e.val_metric for e in res.epochs],
        [e.val_loss for e in res.epochs],
        cum,
        os.getpid(),
    )


def run_cells(
    jobs: Sequence[tuple[TrainConfig, dict[str, Any]]],
    workers: int | None = None,
    fn: Callable[[TrainConfig, dict[str, Any]], Any] = train_cell,
) -> list[Any]:
    """Run every job, in up to `workers` spawned processes (default: the cores); order kept."""
    if not jobs:
        return []
    n = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    # Setup errors (bad spec, shape mismatch) surface here, in this process, before any fork.
    from training.runner import prepare

    prepare(replace(jobs[0][0], device="cpu") if jobs[0][0].device == "auto" else jobs[0][0])
    if n == 1:
        return [fn(cfg, params) for cfg, params in jobs]
    with ProcessPoolExecutor(
        max_workers=n, mp_context=get_context("spawn"), initializer=_worker_init
    ) as pool:
        futures = [pool.submit(fn, cfg, params) for cfg, params in jobs]
        out = []
        for f in futures:
            try:
                out.append(f.result())
            except SetupError:
                raise
            except Exception as e:
                raise InvalidRun(f"a study cell crashed in its worker: {type(e).__name__}: {e}") from e
        return out


def _agg(cells: list[CellResult]) -> dict[str, Any]:
    ok = [c for c in cells if c.diverged_at_step is None]
    metrics = [c.val_metric for c in ok if c.val_metric is not None]
    losses = [c.val_loss for c in ok]
    return {
        **cells[0].params,
        "seeds": [c.seed for c in cells],
        "diverged_seeds": [c.seed for c in cells if c.diverged_at_step is not None],
        "val_metric_mean": statistics.fmean(metrics) if metrics else None,
        "val_metric_std": statistics.stdev(metrics) if len(metrics) > 1 else None,
        "val_loss_mean": statistics.fmean(losses) if losses else None,
        "seconds_mean": statistics.fmean(c.seconds for c in cells),
        "samples_per_s_mean": statistics.fmean(c.samples_per_s for c in cells),
    }


def sensitivity(cells: list[dict[str, Any]], factors: list[str], key: str) -> dict[str, dict[str, Any]]:
    """Per factor: the mean of `key` at each of its levels (over the other factors) and the range."""
    out: dict[str, dict[str, Any]] = {}
    for f in factors:
        levels: dict[str, list[float]] = {}
        for c in cells:
            if c.get(key) is not None:
                levels.setdefault(str(c[f]), []).append(float(c[key]))
        means = {lv: statistics.fmean(v) for lv, v in levels.items()}
        out[f] = {
            "level_means": means,
            "range": (max(means.values()) - min(means.values())) if means else None,
        }
    return out


@dataclass
class SweepResult:
    lrs: list[float]
    batch_sizes: list[int]
    seeds: list[int]
    cells: list[dict[str, Any]]  # one per (lr, batch_size), over the seeds
    runs: list[CellResult]
    sensitivity: dict[str, dict[str, Any]]
    metric: str | None
    workers: int
    wall_seconds: float

    def cell(self, lr: float, batch_size: int) -> dict[str, Any]:
        return next(c for c in self.cells if c["lr"] == lr and c["batch_size"] == batch_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sweep(
    base: TrainConfig, lrs: list[float], batch_sizes: list[int], seeds: int = 2, workers: int | None = None
) -> SweepResult:
    if not lrs or not batch_sizes or seeds < 1:
        raise SetupError("sweep: needs at least one --lr, one --batch-size and --seeds >= 1")
    seed_list = [base.seed + i for i in range(seeds)]
    jobs = [
        (replace(base, lr=lr, batch_size=bs, seed=s), {"lr": lr, "batch_size": bs})
        for lr in lrs
        for bs in batch_sizes
        for s in seed_list
    ]
    n = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    t0 = time.perf_counter()
    runs: list[CellResult] = run_cells(jobs, n)
    wall = time.perf_counter() - t0
    cells = [
        _agg([r for r in runs if r.params == {"lr": lr, "batch_size": bs}])
        for lr in lrs
        for bs in batch_sizes
    ]
    metric = runs[0].metric
    key = "val_metric_mean" if metric else "val_loss_mean"
    return SweepResult(
        lrs,
        batch_sizes,
        seed_list,
        cells,
        runs,
        sensitivity(cells, ["lr", "batch_size"], key),
        metric,
        n,
        wall,
    )


def time_to_target(
    cell: CellResult, target: float, higher_is_better: bool
) -> tuple[int | None, float | None]:
    """First epoch (and training seconds) whose validation metric reaches the target."""
    for epoch, (m, t) in enumerate(
        zip(cell.val_metric_per_epoch[1:], cell.epoch_end_seconds, strict=False), 1
    ):
        if m is not None and (m >= target if higher_is_better else m <= target):
            return epoch, t
    return None, None


def compare_optimizers(
    base: TrainConfig, optimizers: list[str], target: float | None = None, workers: int | None = None
) -> dict[str, Any]:
    from training.optim import DEFAULT_LR, OPTIMIZERS

    unknown = [o for o in optimizers if o not in OPTIMIZERS]
    if unknown:
        raise SetupError(
            f"--optimizers: unknown {', '.join(unknown)}; expected some of {', '.join(OPTIMIZERS)}"
        )
    jobs = [
        (
            replace(base, optimizer=o, lr=base.lr if base.lr is not None else DEFAULT_LR[o]),
            {"optimizer": o, "lr": base.lr if base.lr is not None else DEFAULT_LR[o]},
        )
        for o in optimizers
    ]
    runs: list[CellResult] = run_cells(jobs, workers)
    metric = runs[0].metric
    higher = metric == "accuracy"
    tgt = target if target is not None else (0.9 if higher else None)
    rows = []
    for r in runs:
        epoch, secs = time_to_target(r, tgt, higher) if tgt is not None else (None, None)
        rows.append(
            {
                **r.params,
                "val_metric": r.val_metric,
                "val_loss": r.val_loss,
                "seconds": r.seconds,
                "samples_per_s": r.samples_per_s,
                "diverged_at_step": r.diverged_at_step,
                "target_epoch": epoch,
                "target_seconds": secs,
                "val_metric_per_epoch": r.val_metric_per_epoch,
                "val_loss_per_epoch": r.val_loss_per_epoch,
            }
        )
    return {"metric": metric, "target": tgt, "optimizers": rows, "epochs": base.resolved().epochs}


def _summary(kind: str, base: TrainConfig, study: dict[str, Any], seeds: list[int], run: str | None) -> Any:
    from training import provenance
    from training.pipeline import default_run_id
    from training.provenance import resolve_device
    from training.summary import TrainingSummary

    return TrainingSummary(
        kind=kind,
        run_id=run or default_run_id(kind, base.model),
        config=base.resolved().to_dict(),
        provenance=provenance.collect(resolve_device(base.device), seeds),
        study=study,
    )


def _finish(summary: Any, out: str, write: Callable[[Any, Any], None]) -> int:
    from training.pipeline import run_folder

    folder = run_folder(out, summary.run_id)
    summary.write(folder)
    write(summary, folder)
    print(f"results: {folder}/training_summary.json, report.md, report.html")
    return int(summary.exit_code)


def run_sweep_command(args: Any) -> int:
    from training import study_report
    from training.args import config_from_args

    base = config_from_args(args).resolved()
    lrs = args.lr or [base.lr]
    bss = args.batch_size or [base.batch_size]
    res = sweep(base, lrs, bss, args.seeds, args.workers)
    s = _summary("sweep", base, res.to_dict(), res.seeds, args.run)
    key = "val_metric_mean" if res.metric else "val_loss_mean"
    header, rows = study_report.heatmap_table(s.study, key)
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(map(str, r)))
    for f, d in res.sensitivity.items():
        print(f"sensitivity {f}: range {d['range']:.4g} of the mean {res.metric or 'val loss'}")
    return _finish(s, args.out, study_report.write_sweep_report)


def run_compare_optimizers_command(args: Any) -> int:
    from training import study_report
    from training.args import config_from_args

    base = config_from_args(args)
    st = compare_optimizers(
        base, [o.strip() for o in args.optimizers.split(",") if o.strip()], args.target, args.workers
    )
    for r in st["optimizers"]:
        print(
            f"{r['optimizer']:<13} lr {r['lr']:<8g} final {st['metric'] or 'loss'} "
            f"{r['val_metric'] if r['val_metric'] is not None else r['val_loss']:.4g}  "
            f"target at epoch {r['target_epoch']}"
        )
    s = _summary("compare-optimizers", base, st, [base.seed], args.run)
    return _finish(s, args.out, study_report.write_optimizers_report)


def run_compare_command(args: Any) -> int:
    from training import study_report
    from training.args import config_from_args
    from training.compare import compare, to_rows

    base = config_from_args(args)
    results = compare(base, list(args.model), list(args.inference_batches))
    for r in results:
        print(
            f"{r.model}: {r.params} params, val {r.metric} {r.val_metric if r.val_metric is None else round(r.val_metric, 4)}, peak {r.peak_memory_bytes / 2**20:.1f} MiB "
            f"({r.memory_kind}), train {r.train_samples_per_s:.0f} samples/s, "
            f"infer {', '.join(f'b{b}: {v:.0f}/s' for b, v in r.inference_samples_per_s.items())}"
        )
    s = _summary("compare", base, {"models": to_rows(results)}, [base.seed], args.run)
    return _finish(s, args.out, study_report.write_compare_report)
