"""`modelsoak-train bench`: training performance against the template's targets.

    modelsoak-train bench --model digits-cnn              # the template table, report, exit code
    modelsoak-train bench --model resnet18 --steps 20     # samples/s and the step split at 224x224
    modelsoak-train bench --model digits-cnn --nproc-per-node 2   # torchrun, scaling efficiency

Exit codes: 0 every judged target holds, 3 one fails, 4 one could not be
measured (GPU rows on a CPU, a run too short) or no step was measured, 2 setup
error. training/cli.py registers this subcommand through `add_parser`;
`python -m training.bench_cli bench ...` runs it alone (torchrun uses that).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from training.bench_plan import EXIT_SETUP
from training.errors import SetupError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="training performance: step split, throughput, memory, GPU utilisation, MFU, time-to-accuracy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="built-in (digits-cnn, resnet18) or FILE.py:FUNC")
    p.add_argument("--data", help="built-in or FILE.py:FUNC returning (train, val) datasets")
    p.add_argument("--loss", help="loss name (default: the task's)")
    p.add_argument("--optimizer", help="optimizer (default: the built-in's, else adam)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--schedule", default="constant", help="learning-rate schedule")
    p.add_argument("--batch-size", type=int, help="per-process batch size")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, help="epochs per seed (default: the built-in's, else 10)")
    g.add_argument("--steps", type=int, help="stop after this many steps (a throughput run, no accuracy)")
    p.add_argument("--warmup-steps", type=int, default=5, help="steps excluded from the statistics")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--pin-memory", action="store_true", help="page-locked host batches, non-blocking copies")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for 4-D inputs")
    p.add_argument(
        "--amp", choices=["bf16", "fp16"], help="mixed precision (autocast; GradScaler for fp16 on CUDA)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="seeds for time-to-accuracy (MLPerf drops fastest and slowest from 3)",
    )
    p.add_argument("--plan", help="YAML plan overriding the template's targets (training: section)")
    p.add_argument(
        "--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (else the known-GPU table)"
    )
    p.add_argument("--no-eval", action="store_true", help="skip validation (no accuracy rows)")
    p.add_argument("--out", help="report folder (default results/train-bench/<run id>)")
    p.add_argument("--run-id", help="run id (default train-bench-<time>)")
    p.add_argument(
        "--metrics-port", type=int, help="serve live Prometheus metrics on this port (0: any free port)"
    )
    p.add_argument(
        "--metrics-addr", default="127.0.0.1", help="address for --metrics-port (0.0.0.0 in a pod)"
    )
    p.add_argument("--pushgateway", help="push the final summary to this Pushgateway URL")
    p.add_argument("--log-every", type=int, default=10, help="steps between loss reads and metric updates")
    p.add_argument(
        "--nproc-per-node", type=int, help="run under torchrun with 1 and N processes; report scaling"
    )
    p.add_argument(
        "--scaling-baseline", help="one-process summary.json for the scaling efficiency under torchrun"
    )
    p.set_defaults(handler=run)
    return p


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def _options(args: argparse.Namespace, defaults: dict[str, Any], device: str) -> Any:
    from training.bench import BenchOptions

    return BenchOptions(
        batch_size=_given(args.batch_size, defaults.get("batch_size", 32)),
        epochs=_given(args.epochs, 10**9 if args.steps is not None else defaults.get("epochs", 10)),
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        num_workers=args.num_workers,
        pin_memory=args.pin_memory,
        channels_last=args.channels_last,
        amp=args.amp,
        compile=args.compile,
        device=device,
        optimizer=args.optimizer or defaults.get("optimizer", "adam"),
        lr=_given(args.lr, defaults.get("lr", 1e-3)),
        schedule=args.schedule,
        evaluate=not args.no_eval and args.steps is None,
        log_every=args.log_every,
        grad_norm=args.metrics_port is not None,
    )


def _workload(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from training.bench import Workload
    from training.losses import make_loss
    from training.models import BUILTINS, infer_task, resolve_data, resolve_model

    train, val = resolve_data(args.data, args.model)
    task = infer_task(args.data, args.model, train)
    resolve_model(args.model)  # fail here, with the setup error, not inside the first seed
    defaults = BUILTINS[args.model].defaults if args.model in BUILTINS else {}
    loss = make_loss(args.loss or task.loss)
    work = Workload(
        args.model, lambda: resolve_model(args.model), train, val, loss, task.kind == "classification"
    )
    return work, defaults


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except SetupError as e:
        print(f"modelsoak-train bench: {e}", file=sys.stderr)
        return EXIT_SETUP


def _run(args: argparse.Namespace) -> int:
    from training import bench_plan, bench_report, distributed, provenance
    from training.bench import train_run

    if args.seeds < 1:
        raise SetupError(f"--seeds {args.seeds}: expected >= 1")
    plan = bench_plan.load_plan(args.plan)
    run_id = args.run_id or time.strftime("train-bench-%Y%m%d-%H%M%S")
    out = Path(args.out or Path("results") / "train-bench" / run_id)
    if args.nproc_per_node:
        return _scaling(args, out)
    device, ddp = distributed.setup(
        args.device if args.device != "auto" else str(provenance.resolve_device("auto"))
    )
    try:
        work, defaults = _workload(args)
        opts = _options(args, defaults, device)
        opts.validate()
        monitor = _monitor(args, run_id, ddp)
        hooks = [monitor] if monitor is not None else []
        runs = [train_run(work, opts, seed, hooks, ddp) for seed in range(args.seeds)]
        meta = {
            "run_id": run_id,
            "model": args.model,
            "data": args.data or args.model,
            "world_size": ddp[1] if ddp else 1,
            "provenance": provenance.collect(device, list(range(args.seeds))),
        }
        s = bench_report.summarise(runs, opts, plan, meta, args.peak_tflops)
        if ddp is not None:
            merged = _merge_ranks(s, runs, opts, plan)
            if merged is None:  # not rank 0: the exit code comes from rank 0
                return distributed.broadcast_int(0)
            s = merged
        if args.scaling_baseline:
            rate = distributed.baseline_rate(args.scaling_baseline)
            s["scaling"] = distributed.efficiency(s["steps"].get("samples_per_s", 0.0), s["world_size"], rate)
        return _finish(s, out, args, monitor, ddp)
    finally:
        distributed.teardown()


def _merge_ranks(
    s: dict[str, Any], runs: list[Any], opts: Any, plan: dict[str, Any]
) -> dict[str, Any] | None:
    from training import bench_report, distributed
    from training.bench_stats import measured

    small = {k: v for k, v in s.items() if k not in ("timeline", "loss_curve")}
    gathered = distributed.gather((small, measured(runs[0].steps, opts.warmup_steps)))
    if gathered is None:
        return None
    merged = distributed.merge([g[0] for g in gathered], [g[1] for g in gathered])
    merged["timeline"], merged["loss_curve"] = s["timeline"], s["loss_curve"]
    return bench_report.judge(merged, plan, merged["options"])


def _finish(s: dict[str, Any], out: Path, args: argparse.Namespace, monitor: Any, ddp: Any) -> int:
    from training import bench_report, distributed

    bench_report.write(s, out)
    print(bench_report.console(s))
    print(f"report: {out / 'report.md'}")
    if monitor is not None:
        monitor.finish(s)
    if args.pushgateway:
        from training.monitor import push_summary

        try:
            push_summary(args.pushgateway, s)
        except OSError as e:
            print(f"pushing the summary to {args.pushgateway} failed: {e}", file=sys.stderr)
    code = int(s["exit_code"])
    return distributed.broadcast_int(code) if ddp is not None else code


def _monitor(args: argparse.Namespace, run_id: str, ddp: Any) -> Any:
    if args.metrics_port is None:
        return None
    from training.monitor import TrainingMonitor

    rank = ddp[0] if ddp else 0
    port = args.metrics_port + rank if args.metrics_port else 0  # one port per local rank
    return TrainingMonitor(run_id, args.model, rank=rank, port=port, addr=args.metrics_addr)


def _scaling(args: argparse.Namespace, out: Path) -> int:
    """torchrun with 1 process, then with N; the N-process report gets the efficiency."""
    from training import bench_report, distributed

    if args.nproc_per_node < 2:
        raise SetupError(
            f"--nproc-per-node {args.nproc_per_node}: expected >= 2 (one process is the baseline)"
        )
    argv = _forward_argv(getattr(args, "argv", None) or sys.argv[1:])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    _, one = distributed.launch(1, argv, out / "nproc-1", env)
    _, many = distributed.launch(args.nproc_per_node, argv, out / f"nproc-{args.nproc_per_node}", env)
    many["scaling"] = distributed.efficiency(
        many["steps"].get("samples_per_s", 0.0), args.nproc_per_node, one["steps"].get("samples_per_s", 0.0)
    )
    bench_report.write(many, out)
    print(bench_report.console(many))
    print(f"report: {out / 'report.md'}")
    return int(many["exit_code"])  # torchrun's own code is 1 for any failure: the verdict's instead


def _forward_argv(argv: list[str]) -> list[str]:
    """This command's flags minus --nproc-per-node, --out and the subcommand itself."""
    out, skip = [], False
    if "bench" in argv:
        argv = argv[argv.index("bench") + 1 :]
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--nproc-per-node", "--out"):
            skip = True
            continue
        if a.startswith(("--nproc-per-node=", "--out=")):
            continue
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.bench_cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    args.argv = argv
    return int(args.handler(args))


def _exit_under_torchrun(code: int) -> None:
    """End a torchrun rank without running C++ static destructors.

    At interpreter exit gloo's worker threads can still be joinable while the
    runtime destroys them, which aborts the process ("terminate called without
    an active exception", SIGABRT) after the report was written and the verdict
    agreed: torchrun then reports a failure the run did not have. Every rank
    has left the process group by now (teardown), so flushing and leaving with
    os._exit loses nothing.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _code = main()
    from training import distributed as _distributed

    if _distributed.world() is not None:
        _exit_under_torchrun(_code)
    raise SystemExit(_code)
