"""Reports of the studies: sweep heatmap and sensitivity, optimizer curves and time-to-target,
the model comparison table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training import plots
from training.report import Report, _provenance
from training.summary import TrainingSummary


def heatmap_table(study: dict[str, Any], key: str) -> tuple[list[str], list[list[Any]]]:
    """Rows = learning rates, columns = batch sizes, cell = mean ± std of `key` over seeds."""
    header = ["lr \\ batch size", *[str(b) for b in study["batch_sizes"]]]
    rows = []
    for lr in study["lrs"]:
        row: list[Any] = [f"{lr:g}"]
        for bs in study["batch_sizes"]:
            c = next(c for c in study["cells"] if c["lr"] == lr and c["batch_size"] == bs)
            v, sd = c.get(key), c.get(key.replace("_mean", "_std"))
            txt = "diverged" if v is None else f"{v:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")
            row.append(txt)
        rows.append(row)
    return header, rows


def write_sweep_report(s: TrainingSummary, folder: Path) -> None:
    st = s.study
    metric = st["metric"]
    key = "val_metric_mean" if metric else "val_loss_mean"
    label = f"validation {metric or 'loss'}"
    rep = Report(f"modelsoak-train sweep: {s.config['model']}")
    rep.p(
        f"{len(st['cells'])} cells x {len(st['seeds'])} seeds = {len(st['runs'])} real trainings, "
        f"{st['workers']} parallel workers, {st['wall_seconds']:.1f} s wall; "
        f"{s.config['epochs']} epochs each, optimizer {s.config['optimizer']}."
    )
    rep.h(f"Final {label} (mean ± std over seeds)")
    header, rows = heatmap_table(st, key)
    rep.table(header, rows)
    values = [
        [
            next(c for c in st["cells"] if c["lr"] == lr and c["batch_size"] == bs).get(key)
            for bs in st["batch_sizes"]
        ]
        for lr in st["lrs"]
    ]
    rep.chart(
        "sweep_heatmap",
        plots.heatmap(
            f"Final {label}",
            [f"{v:g}" for v in st["lrs"]],
            [str(b) for b in st["batch_sizes"]],
            values,
            "lr",
            "batch size",
            higher_is_better=metric == "accuracy",
        ),
    )
    rep.h("Sensitivity (how far the mean moves across each factor's levels)")
    rep.table(
        ["factor", "range of the mean", "mean per level"],
        [
            [f, d["range"], ", ".join(f"{k}: {v:.3f}" for k, v in d["level_means"].items())]
            for f, d in st["sensitivity"].items()
        ],
    )
    rep.h("Cells")
    rep.table(
        [
            "lr",
            "batch size",
            f"{label} mean",
            "val loss mean",
            "seconds (mean)",
            "samples/s",
            "diverged seeds",
        ],
        [
            [
                c["lr"],
                c["batch_size"],
                c.get(key),
                c["val_loss_mean"],
                c["seconds_mean"],
                c["samples_per_s_mean"],
                ",".join(map(str, c["diverged_seeds"])) or "—",
            ]
            for c in st["cells"]
        ],
    )
    _provenance(rep, s)
    rep.write(folder)


def write_optimizers_report(s: TrainingSummary, folder: Path) -> None:
    st = s.study
    metric = st["metric"]
    rep = Report(f"modelsoak-train compare-optimizers: {s.config['model']}")
    rep.p(
        f"Same model, data, seed and budget ({st['epochs']} epochs) for each optimizer; "
        f"time-to-target is the first epoch reaching {metric} {st['target']}."
    )
    rep.table(
        [
            "optimizer",
            "lr",
            f"final {metric or 'loss'}",
            "val loss",
            "epochs to target",
            "training seconds to target",
            "run wall seconds",
            "samples/s",
            "diverged at step",
        ],
        [
            [
                r["optimizer"],
                r["lr"],
                r["val_metric"],
                r["val_loss"],
                r["target_epoch"],
                r["target_seconds"],
                r["seconds"],
                r["samples_per_s"],
                r["diverged_at_step"],
            ]
            for r in st["optimizers"]
        ],
    )
    key = "val_metric_per_epoch" if metric else "val_loss_per_epoch"
    series = {}
    for r in st["optimizers"]:
        ys = [v for v in r[key] if v is not None]
        series[r["optimizer"]] = ([float(i) for i in range(len(ys))], [float(v) for v in ys])
    rep.chart(
        "optimizer_curves",
        plots.line_chart(f"Validation {metric or 'loss'} per epoch", series, "epoch", metric or "loss"),
    )
    _provenance(rep, s)
    rep.write(folder)


def write_compare_report(s: TrainingSummary, folder: Path) -> None:
    models = s.study["models"]
    batches = sorted({int(b) for m in models for b in m["inference_samples_per_s"]})
    rep = Report("modelsoak-train compare")
    rep.p(
        f"Each model trained {s.config['epochs']} epochs alone in a fresh process; memory is "
        f"{models[0]['memory_kind'] if models else ''} (measured, not estimated)."
    )
    rep.table(
        [
            "model",
            "params",
            f"val {models[0]['metric'] if models else ''}",
            "val loss",
            "peak memory MiB",
            "train samples/s",
            *[f"infer b={b} samples/s" for b in batches],
        ],
        [
            [
                m["model"],
                m["params"],
                m["val_metric"],
                m["val_loss"],
                m["peak_memory_bytes"] / 2**20,
                m["train_samples_per_s"],
                *[
                    m["inference_samples_per_s"].get(b, m["inference_samples_per_s"].get(str(b)))
                    for b in batches
                ],
            ]
            for m in models
        ],
    )
    speeds = {}
    for m in models:
        ips = {int(b): float(v) for b, v in m["inference_samples_per_s"].items()}
        speeds[m["model"]] = ([float(b) for b in sorted(ips)], [ips[b] for b in sorted(ips)])
    rep.chart(
        "inference_throughput",
        plots.line_chart("Inference samples/s by batch size", speeds, "batch size", "samples/s", log_y=True),
    )
    _provenance(rep, s)
    rep.write(folder)
