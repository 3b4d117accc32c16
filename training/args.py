"""The flags every `modelsoak-train` subcommand shares, and the TrainConfig they describe.

Apart from cli.py so that the studies (and the bench) can map flags onto a config without
importing the command line itself.
"""

from __future__ import annotations

import argparse
from typing import Any

from training.config import TrainConfig
from training.losses import LOSSES
from training.optim import OPTIMIZERS, SCHEDULES


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def add_training_args(p: argparse.ArgumentParser, *, model_multi: bool = False, grid: bool = False) -> None:
    """Model, data and training flags every subcommand shares (grid: lists for a sweep)."""
    if model_multi:
        p.add_argument(
            "--model", action="append", required=True, help="built-in name or FILE.py:FUNC (repeat)"
        )
    else:
        p.add_argument(
            "--model", default="digits-cnn", help="built-in (digits-cnn, resnet18) or FILE.py:FUNC"
        )
    p.add_argument(
        "--data", default=None, help="built-in name or FILE.py:FUNC returning (train, val) datasets"
    )
    p.add_argument("--loss", choices=LOSSES, default=None, help="default: the task's (cross_entropy / mse)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    p.add_argument("--lr", type=_floats if grid else float, default=None)
    p.add_argument("--batch-size", type=_ints if grid else int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--weight-decay", type=float, default=None, help="default: 0.01 for adamw, else 0")
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap the steps of each epoch")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (CUDA)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's; 1 is faster for small models on busy CPUs)",
    )
    s = p.add_argument_group("learning-rate schedule")
    s.add_argument("--schedule", choices=(*SCHEDULES, "none"), default="constant")
    s.add_argument("--step-size", type=int, default=None, help="step: epochs between drops")
    s.add_argument("--gamma", type=float, default=None, help="step: factor per drop (0.1)")
    s.add_argument("--eta-min", type=float, default=None, help="cosine, warmup_cosine: final LR (0)")
    s.add_argument("--patience", type=int, default=None, help="plateau: epochs without improvement (2)")
    s.add_argument("--factor", type=float, default=None, help="plateau: factor per reduction (0.1)")
    s.add_argument("--max-lr", type=float, default=None, help="onecycle: peak LR (10 x --lr)")
    s.add_argument("--pct-start", type=float, default=None, help="onecycle: share of steps rising (0.3)")
    s.add_argument("--warmup-steps", type=int, default=None, help="warmup_cosine: steps (one epoch)")
    p.add_argument("--out", default="results", help="results folder (the run's folder goes inside)")
    p.add_argument("--run", default=None, help="run name (default: <time>-<command>-<model>)")


_SCHEDULE_KEYS = (
    "step_size",
    "gamma",
    "eta_min",
    "patience",
    "factor",
    "max_lr",
    "pct_start",
    "warmup_steps",
)


def config_from_args(args: argparse.Namespace, **override: Any) -> TrainConfig:
    """The TrainConfig the flags describe; `override` sets fields the caller varies (a grid)."""
    kw = {k: getattr(args, k) for k in _SCHEDULE_KEYS if getattr(args, k, None) is not None}
    fields: dict[str, Any] = {
        "model": args.model if isinstance(args.model, str) else args.model[0],
        "data": args.data,
        "loss": args.loss,
        "optimizer": args.optimizer,
        "lr": args.lr if not isinstance(args.lr, list) else None,
        "batch_size": args.batch_size if not isinstance(args.batch_size, list) else None,
        "epochs": args.epochs,
        "seed": args.seed,
        "device": args.device,
        "schedule": "constant" if args.schedule == "none" else args.schedule,
        "schedule_kw": kw,
        "weight_decay": args.weight_decay,
        "max_steps_per_epoch": args.max_steps_per_epoch,
        "deterministic": args.deterministic,
    }
    fields |= override
    return TrainConfig(**fields)
