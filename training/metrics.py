"""How a run is scored, and what a trivial model would score on the same data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from training.models import Task


@dataclass(frozen=True)
class Metric:
    name: str  # accuracy | mse
    higher_is_better: bool
    # (outputs, targets) → sum over the batch (averaged by the caller over samples).
    batch_sum: Callable[[torch.Tensor, torch.Tensor], float]


def _accuracy_sum(out: torch.Tensor, target: torch.Tensor) -> float:
    if out.dim() >= 2 and out.shape[1] > 1:
        pred = out.argmax(dim=1)
        if target.dim() == out.dim():  # one-hot or probability targets
            target = target.argmax(dim=1)
    else:  # one logit: positive means class 1
        pred = (out.reshape(target.shape) > 0).long()
    return float((pred == target.long()).sum())


def _mse_sum(out: torch.Tensor, target: torch.Tensor) -> float:
    t = target.reshape(out.shape).to(out.dtype) if target.numel() == out.numel() else target
    return float(((out - t) ** 2).flatten(1).mean(1).sum())


def metric_for(task: Task, loss: str) -> Metric | None:
    """Accuracy for a classifier, mse for regression; none for embeddings (contrastive)."""
    if loss == "contrastive":
        return None
    if task.kind == "classification":
        return Metric("accuracy", True, _accuracy_sum)
    return Metric("mse", False, _mse_sum)


def targets_of(ds: Dataset) -> torch.Tensor:
    loader = DataLoader(ds, batch_size=512, shuffle=False)
    return torch.cat([torch.as_tensor(t).reshape(len(t), -1) for _, t in loader]).squeeze(1)


@dataclass(frozen=True)
class Baseline:
    """The trivial model's score: what "learned something" has to beat."""

    description: str
    metric: float | None
    loss: float | None


def baseline(task: Task, loss: str, train: Dataset, val: Dataset) -> Baseline:
    yt, yv = targets_of(train), targets_of(val)
    if loss == "contrastive":
        # A constant embedding: every different-label pair sits at distance 0, costing margin².
        n = len(yv)
        same = sum(int(c) * (int(c) - 1) // 2 for c in torch.unique(yv, return_counts=True)[1])
        pairs = n * (n - 1) // 2
        return Baseline("constant embedding", None, (pairs - same) / max(1, pairs))  # margin 1
    if task.kind == "classification":
        classes, counts = torch.unique(yt.long(), return_counts=True)
        majority = int(classes[counts.argmax()])
        acc = float((yv.long() == majority).float().mean())
        return Baseline(f"majority class ({majority})", acc, None)
    mean = yt.float().mean(0)
    mse = float(((yv.float() - mean) ** 2).mean())
    return Baseline("mean of the training targets", mse, mse)
