"""A bench run's summary (summary.json, schema_version 1), the template table on
stdout, and report.md / report.html with the plots: throughput and the step
split over time, memory over time, accuracy against training time."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from training import bench_advice, bench_plan, bench_stats
from training.bench import BenchOptions, RunResult
from training.bench_svg import chart
from training.steptimer import PHASES

SCHEMA_VERSION = 1


def summarise(
    runs: list[RunResult],
    opts: BenchOptions,
    plan: dict[str, float | None],
    meta: dict[str, Any],
    peak_override: float | None = None,
) -> dict[str, Any]:
    """Everything a bench run reports. The first seed's run gives the performance
    figures; every seed counts for time-to-accuracy."""
    main = runs[0]
    steps = bench_stats.measured(main.steps, opts.warmup_steps)
    st = bench_stats.step_stats(steps)
    device_name = meta.get("provenance", {}).get("device", {}).get("name", "")
    precision = _precision(opts, main.device)
    s: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "training-bench",
        **meta,
        "device": main.device,
        "options": dict(vars(opts)),
        "plan": plan,
        "not_judged": bench_plan.not_judged(plan),
        "warmup_steps": opts.warmup_steps,
        "steps": st,
        "epochs": bench_stats.epochs_table(main, opts.warmup_steps),
        "memory": bench_stats.memory_stats(main),
        "gpu": bench_stats.gpu_stats(main),
        "flops": bench_stats.flops_stats(
            main, st.get("samples_per_s"), device_name, precision, peak_override
        ),
        "accuracy": bench_stats.accuracy_stats(runs, plan["target_accuracy"] or 0.0),
        "nonfinite_loss_steps": sum(r.nonfinite_steps for r in runs),
        "timeline": bench_stats.timeline(main, opts.warmup_steps),
        "loss_curve": main.losses,
    }
    return judge(s, plan, vars(opts))


def _precision(opts: BenchOptions, device: str) -> str:
    """Which peak MFU is against: the autocast dtype, else TF32 where torch lets
    matmuls or convolutions use it (Ampere and later), else FP32."""
    if opts.amp:
        return opts.amp
    if device.startswith("cuda"):
        import torch

        tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
        if tf32 and torch.cuda.get_device_capability(torch.device(device)) >= (8, 0):
            return "tf32"
    return "fp32"


def judge(s: dict[str, Any], plan: dict[str, float | None], opts: dict[str, Any]) -> dict[str, Any]:
    """The table, verdict and bottleneck analysis (again after merging ranks)."""
    rows = bench_plan.checks(plan, s)
    s["checks"] = [r.as_dict() for r in rows]
    s["verdict"], s["exit_code"] = bench_plan.verdict(rows, s["steps"].get("count", 0))
    s["bottleneck"] = bench_advice.analyse(s, opts, plan["max_peak_memory_bytes"])
    return s


def table(s: dict[str, Any]) -> str:
    rows = [("metric", "target", "actual", "status")]
    rows += [(c["metric"], c["target"], c["actual"], c["status"]) for c in s["checks"]]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def console(s: dict[str, Any]) -> str:
    st = s["steps"]
    out = [f"modelsoak-train bench: {s.get('model')} on {s['device']} (world size {s.get('world_size', 1)})"]
    if st.get("count"):
        split = ", ".join(f"{k} {v['share']:.0%}" for k, v in st["split"].items())
        out.append(
            f"  {st['samples_per_s']:.1f} samples/s; step p50 {st['p50_ms']:.2f} ms, p95 {st['p95_ms']:.2f} ms, "
            f"p99 {st['p99_ms']:.2f} ms over {st['count']} steps ({s['warmup_steps']} warm-up excluded)"
        )
        out.append(f"  step split ({st['timing']}): {split}")
    f = s["flops"]
    if f.get("achieved_tflops") is not None:
        mfu = f"MFU {f['mfu']:.1%}" if "mfu" in f else f"MFU not measured: {f['mfu_reason']}"
        out.append(f"  {f['per_sample'] / 1e6:.1f} MFLOP/sample, {f['achieved_tflops']:.4f} TFLOP/s, {mfu}")
    if "scaling" in s:
        sc = s["scaling"]
        out.append(f"  scaling: {sc['world_size']} processes, efficiency {sc['efficiency']:.1%}")
    out += ["", table(s), "", f"verdict: {s['verdict']} (exit {s['exit_code']})"]
    b = s["bottleneck"]
    if b.get("summary"):
        out.append(f"bottleneck: {b['summary']}")
    out += [f"  - {x['trigger']}: {x['suggestion']}" for x in b["suggestions"]]
    return "\n".join(out)


def plots(s: dict[str, Any]) -> dict[str, str]:
    tl = s["timeline"]
    acc = [
        (f"seed {x['seed']}", [c[0] for c in x["curve"]], [c[1] for c in x["curve"]])
        for x in s["accuracy"]["seeds"]
    ]
    target = s["accuracy"]["target"]
    if acc and target:
        xs = [c for _, cx, _ in acc for c in cx]
        if xs:
            acc.append(("target", [0.0, max(xs)], [target, target]))
    mem = tl["memory"]
    return {
        "throughput.svg": chart(
            "Throughput", [("samples/s", tl["t_s"], tl["samples_per_s"])], "time (s)", "samples/s"
        ),
        "step_split.svg": chart(
            "Step time split",
            [(p, tl["t_s"], tl["split"][p]) for p in (*PHASES, "other")],
            "time (s)",
            "share",
            stacked=True,
        ),
        "memory.svg": chart(
            f"Memory ({s['memory']['source']})", [("bytes", mem["t_s"], mem["bytes"])], "time (s)", "bytes"
        ),
        "accuracy.svg": chart("Validation accuracy", acc, "training time (s)", "accuracy"),
    }


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def markdown(s: dict[str, Any]) -> str:
    prov = s.get("provenance", {})
    lines = [
        f"# Training bench: {s.get('model')}",
        "",
        f"Verdict: **{s['verdict']}** (exit {s['exit_code']}). Device {s['device']} "
        f"({prov.get('device', {}).get('name', '')}), torch {prov.get('torch_version', '')}, "
        f"git {prov.get('git_sha', '')}, world size {s.get('world_size', 1)}.",
        "",
        "## Template targets",
        "",
        *_md_table(
            ["metric", "target", "actual", "status"],
            [[c["metric"], c["target"], c["actual"], c["status"]] for c in s["checks"]],
        ),
    ]
    if s["not_judged"]:
        lines += ["", "Not judged (null in the plan): " + ", ".join(s["not_judged"]) + "."]
    st = s["steps"]
    if st.get("count"):
        lines += [
            "",
            "## Steps",
            "",
            f"{st['count']} steps measured after {s['warmup_steps']} warm-up steps; timing: {st['timing']}.",
            "",
        ]
        lines += _md_table(
            ["samples/s", "p50 ms", "p95 ms", "p99 ms"],
            [
                [
                    f"{st['samples_per_s']:.1f}",
                    f"{st['p50_ms']:.3f}",
                    f"{st['p95_ms']:.3f}",
                    f"{st['p99_ms']:.3f}",
                ]
            ],
        )
        lines += [
            "",
            *_md_table(
                ["phase", "mean ms", "share"],
                [
                    [k, f"{v['mean_ms']:.3f}" if v["mean_ms"] is not None else "n/a", f"{v['share']:.1%}"]
                    for k, v in st["split"].items()
                ],
            ),
        ]
    lines += ["", "## Epochs", ""]
    lines += _md_table(
        ["epoch", "time s", "samples/s", "loss", "accuracy", "peak memory"],
        [
            [
                str(e["epoch"]) + ("" if e["complete"] else " (partial)"),
                f"{e['wall_s']:.2f}",
                f"{e['samples_per_s']:.1f}" if e["samples_per_s"] else "n/a",
                f"{e['loss']:.4f}" if e["loss"] is not None else "n/a",
                f"{e['accuracy']:.3f}" if e["accuracy"] is not None else "n/a",
                f"{(e['peak_allocated_bytes'] or e['peak_rss_bytes']) / 1e6:.1f} MB",
            ]
            for e in s["epochs"]
        ],
    )
    acc = s["accuracy"]
    if "time_to_accuracy_s" in acc:
        sp = acc["spread"]
        lines += [
            "",
            f"Time to {acc['target']:.0%}: {acc['time_to_accuracy_s']:.2f} s, {acc['epochs_to_accuracy']:.2f} epochs "
            f"({acc['rule']}); spread {sp['time_min_s']:.2f}-{sp['time_max_s']:.2f} s, "
            f"epochs {sp['epochs_min']:g}-{sp['epochs_max']:g}.",
        ]
    lines += ["", "## Bottleneck analysis", "", s["bottleneck"].get("summary", "no steps measured") + "."]
    lines += [f"- {x['trigger']}: {x['suggestion']}" for x in s["bottleneck"]["suggestions"]]
    lines += ["", "## Plots", "", *(f"![{n}]({n})" for n in plots(s))]
    return "\n".join(lines) + "\n"


def to_html(md: str, svgs: dict[str, str]) -> str:
    """The Markdown report as HTML: headings, tables, bullets, the plots inline."""
    out, table = [], False
    for line in md.splitlines():
        if table and not line.startswith("|"):
            out.append("</table>")
            table = False
        if line.startswith("|"):
            if set(line) <= set("|-"):
                continue
            cell = "th" if not table else "td"
            if not table:
                out.append("<table border=1 cellspacing=0 cellpadding=4>")
                table = True
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            out.append("<tr>" + "".join(f"<{cell}>{c}</{cell}>" for c in cells) + "</tr>")
        elif line.startswith("!["):
            out.append(f"<p>{svgs[line[line.index('(') + 1 : -1]]}</p>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    if table:
        out.append("</table>")
    return "<!doctype html><meta charset=utf-8><title>training bench</title>\n" + "\n".join(out) + "\n"


def write(s: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(s, indent=2, default=float) + "\n")
    svgs = plots(s)
    for name, svg in svgs.items():
        (out_dir / name).write_text(svg)
    md = markdown(s)
    (out_dir / "report.md").write_text(md)
    (out_dir / "report.html").write_text(to_html(md, svgs))
    return out_dir
