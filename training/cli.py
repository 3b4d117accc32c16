"""`modelsoak-train`: a thin command line over the training package's Python API.

Exit codes are the load generator's: 0 all checks pass, 3 a check failed, 4 the run was invalid,
2 a setup error (bad model, data or flag), with a message naming what was wrong.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from training.args import _ints, add_training_args, config_from_args
from training.errors import InvalidRun, SetupError
from training.optim import OPTIMIZERS

EXIT_PASS, EXIT_SETUP, EXIT_FAIL, EXIT_INVALID = 0, 2, 3, 4


def _cmd_check(args: argparse.Namespace) -> int:
    from training import pipeline

    checks = args.checks.split(",") if args.checks else None
    return pipeline.run_check_command(
        config_from_args(args), checks=checks, seeds=args.seeds, out=args.out, run=args.run
    )


def _cmd_sweep(args: argparse.Namespace) -> int:
    from training import studies

    return studies.run_sweep_command(args)


def _cmd_compare_optimizers(args: argparse.Namespace) -> int:
    from training import studies

    return studies.run_compare_optimizers_command(args)


def _cmd_compare(args: argparse.Namespace) -> int:
    from training import studies

    return studies.run_compare_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelsoak-train", description="Test a model in training: checks, studies, benchmarks."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="the nine training checks on a model and its data")
    add_training_args(c)
    c.add_argument("--checks", default=None, help="comma-separated subset (default: all nine)")
    c.add_argument("--seeds", type=int, default=3, help="seeds for the stability check (3)")
    c.set_defaults(handler=_cmd_check)

    s = sub.add_parser("sweep", help="train every cell of an LR x batch-size grid, repeated over seeds")
    add_training_args(s, grid=True)
    s.add_argument("--seeds", type=int, default=2, help="seeds per cell (2)")
    s.add_argument("--workers", type=int, default=None, help="parallel processes (default: the cores)")
    s.set_defaults(handler=_cmd_sweep)

    o = sub.add_parser("compare-optimizers", help="the optimizers on one model, data and budget")
    add_training_args(o)
    o.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    o.add_argument("--target", type=float, default=None, help="metric for time-to-target (0.9 accuracy)")
    o.add_argument("--workers", type=int, default=None)
    o.set_defaults(handler=_cmd_compare_optimizers)

    m = sub.add_parser("compare", help="models side by side: accuracy, size, memory, speed")
    add_training_args(m, model_multi=True)
    m.add_argument("--inference-batches", type=_ints, default=[1, 8, 32, 128])
    m.set_defaults(handler=_cmd_compare)

    try:
        bench_cli = importlib.import_module("training.bench_cli")
    except ImportError as e:
        if e.name != "training.bench_cli":  # a broken bench module is an error, not an absence
            raise
    else:
        bench_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return handler(args)
    except SetupError as e:
        print(f"modelsoak-train: error: {e}", file=sys.stderr)
        return EXIT_SETUP
    except InvalidRun as e:
        print(f"modelsoak-train: invalid run: {e}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
