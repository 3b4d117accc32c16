"""report.md and report.html from one list of blocks (headings, text, tables, charts), so the
two say the same; charts are SVG files beside report.md and inline in report.html."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training import plots
from training.summary import TrainingSummary

CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "th{background:#f3f3f3}.PASS{color:#2a7a2a}.WARN{color:#b36b00}.FAIL,.INVALID{color:#c62828}"
)


@dataclass
class Report:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    charts: dict[str, str] = field(default_factory=dict)

    def h(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def chart(self, name: str, svg: str) -> None:
        self.charts[name] = svg
        self.blocks.append(("chart", name))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, val in self.blocks:
            if kind == "h2":
                out += [f"## {val}", ""]
            elif kind == "p":
                out += [val, ""]
            elif kind == "table":
                header, rows = val
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(_cell(c).replace("|", "\\|") for c in r) + " |" for r in rows]
                out.append("")
            elif kind == "chart":
                out += [f"![{val}]({val}.svg)", ""]
        return "\n".join(out)

    def html(self) -> str:
        out = [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"
        ]
        for kind, val in self.blocks:
            if kind == "h2":
                out.append(f"<h2>{html.escape(val)}</h2>")
            elif kind == "p":
                out.append(f"<p>{html.escape(val)}</p>")
            elif kind == "table":
                header, rows = val
                out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
                for r in rows:
                    cells = []
                    for c in r:
                        text = _cell(c)
                        cls = f" class='{text}'" if text in ("PASS", "WARN", "FAIL", "INVALID") else ""
                        cells.append(f"<td{cls}>{html.escape(text)}</td>")
                    out.append("<tr>" + "".join(cells) + "</tr>")
                out.append("</table>")
            elif kind == "chart":
                out.append(f"<div>{self.charts[val]}</div>")
        out.append("</body></html>")
        return "\n".join(out)

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, svg in self.charts.items():
            (folder / f"{name}.svg").write_text(svg)
        (folder / "report.md").write_text(self.markdown())
        (folder / "report.html").write_text(self.html())


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _provenance(rep: Report, s: TrainingSummary) -> None:
    pv = s.provenance
    rep.h("Provenance")
    rep.table(
        ["git SHA", "torch", "device", "seeds", "host"],
        [
            [
                pv.get("git_sha"),
                pv.get("torch_version"),
                pv.get("device", {}).get("type"),
                ",".join(map(str, pv.get("seeds", []))),
                pv.get("host", {}).get("hostname"),
            ]
        ],
    )


def _check_charts(rep: Report, hist: dict[str, Any], metric: str | None) -> None:
    epochs = hist.get("epochs", [])
    if epochs:
        ex = [float(e["epoch"]) for e in epochs]
        tr = [(float(e["epoch"]), e["train_loss"]) for e in epochs if e["train_loss"] is not None]
        rep.chart(
            "loss",
            plots.line_chart(
                "Loss per epoch",
                {
                    "train": ([x for x, _ in tr], [float(y) for _, y in tr]),
                    "validation": (ex, [float(e["val_loss"]) for e in epochs]),
                },
                "epoch",
                "loss",
                log_y=all(float(e["val_loss"]) > 0 for e in epochs),
            ),
        )
        if metric:
            tm = [(float(e["epoch"]), e["train_metric"]) for e in epochs if e["train_metric"] is not None]
            rep.chart(
                "metric",
                plots.line_chart(
                    f"{metric} per epoch",
                    {
                        "train": ([x for x, _ in tm], [float(y) for _, y in tm]),
                        "validation": (ex, [float(e["val_metric"]) for e in epochs]),
                    },
                    "epoch",
                    metric,
                ),
            )
    lrs = hist.get("step_lr", [])
    if lrs:
        n = hist.get("steps", len(lrs))
        xs = [i * (n - 1) / max(1, len(lrs) - 1) for i in range(len(lrs))]
        rep.chart("lr", plots.line_chart("Learning rate per step", {"lr": (xs, lrs)}, "step", "LR"))
    grads = hist.get("grad_norm", {})
    if grads:
        n = hist.get("steps", 1)
        order = [p for p in hist.get("param_order", grads) if p in grads]
        weights = [p for p in order if not p.endswith("bias")] or order
        pick = (
            weights if len(weights) <= 10 else [weights[round(i * (len(weights) - 1) / 9)] for i in range(10)]
        )
        series = {
            p: ([i * (n - 1) / max(1, len(grads[p]) - 1) for i in range(len(grads[p]))], grads[p])
            for p in pick
        }
        rep.chart(
            "grad_norms",
            plots.line_chart(
                "Gradient norm per layer over steps", series, "step", "gradient norm", log_y=True
            ),
        )


def write_check_report(s: TrainingSummary, folder: Path) -> None:
    cfg = s.config
    rep = Report(f"modelsoak-train check: {cfg['model']} — {s.verdict}")
    rep.p(
        f"Run {s.run_id}: model {cfg['model']}, data {cfg['data'] or cfg['model']}, loss {cfg['loss']}, "
        f"optimizer {cfg['optimizer']} at lr {cfg['lr']}, batch {cfg['batch_size']}, {cfg['epochs']} epochs, "
        f"schedule {cfg['schedule']}, seed {cfg['seed']}. Verdict {s.verdict} (exit {s.exit_code})."
    )
    rep.h("Checks")
    rep.table(["check", "status", "detail"], [[c.name, c.status, c.detail] for c in s.checks])
    for c in s.checks:
        layers = c.evidence.get("layers")
        if c.name == "gradient_flow" and isinstance(layers, list):
            rep.h("Gradient flow per parameter (forward order)")
            rep.table(
                [
                    "parameter",
                    "numel",
                    "median grad norm",
                    "median RMS grad",
                    "steps without grad",
                    "median update/weight",
                ],
                [
                    [
                        d["param"],
                        d["numel"],
                        d["grad_norm_median"],
                        d["grad_rms_median"],
                        d["no_grad_steps"],
                        d["update_ratio_median"],
                    ]
                    for d in layers
                ],
            )
    epochs = s.history.get("epochs", [])
    if epochs:
        rep.h("Per epoch")
        rep.table(
            [
                "epoch",
                "train loss",
                "val loss",
                f"train {s.task.get('metric') or ''}",
                f"val {s.task.get('metric') or ''}",
                "lr",
                "seconds",
            ],
            [
                [
                    e["epoch"],
                    e["train_loss"],
                    e["val_loss"],
                    e["train_metric"],
                    e["val_metric"],
                    e["lr"],
                    e["seconds"],
                ]
                for e in epochs
            ],
        )
    rep.h("Charts")
    _check_charts(rep, s.history, s.task.get("metric"))
    _provenance(rep, s)
    rep.write(folder)
