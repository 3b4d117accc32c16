"""Loss functions by name. Focal, dice and contrastive are our own (tested against closed forms);
the others are torch's, with class-index targets one-hot encoded where the loss wants a
target shaped like the output (mse and bce_with_logits on a classifier)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from training.errors import SetupError

LOSSES = ("cross_entropy", "mse", "bce_with_logits", "focal", "dice", "contrastive")


def _as_target_like(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class indices (N,) against (N, C) outputs become one-hot floats; else the same shape."""
    if output.dim() == target.dim() + 1 and not torch.is_floating_point(target):
        return F.one_hot(target.long(), output.shape[1]).movedim(-1, 1).to(output.dtype)
    if output.shape != target.shape and output.numel() == target.numel():
        return target.reshape(output.shape).to(output.dtype)
    if output.shape != target.shape:
        raise SetupError(
            f"loss: the model's output has shape {tuple(output.shape)} but the targets have shape "
            f"{tuple(target.shape)}; expected the same shape, or class indices (N,) for (N, C) outputs"
        )
    return target.to(output.dtype)


class _TargetLike(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(output, _as_target_like(output, target))


def check_class_targets(name: str, output: torch.Tensor, target: torch.Tensor) -> None:
    """(N, C) logits against integer classes 0..C-1, or a SetupError saying what does not fit."""
    if output.dim() < 2 or torch.is_floating_point(target) or target.shape[0] != output.shape[0]:
        raise SetupError(
            f"{name}: expected (N, C) logits and N integer class targets, got output "
            f"{tuple(output.shape)} and {target.dtype} targets {tuple(target.shape)}"
        )
    n_classes = output.shape[1]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= n_classes):
        bad = int(target.max()) if int(target.max()) >= n_classes else int(target.min())
        raise SetupError(
            f"{name}: target class {bad} does not fit the model's {n_classes} outputs "
            f"(expected classes 0..{n_classes - 1})"
        )


class CrossEntropy(nn.Module):
    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_class_targets("cross_entropy", output, target)
        return F.cross_entropy(output, target.long())


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017): mean of -(1 - p_t)^γ log p_t. γ = 0 is cross-entropy."""

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_class_targets("focal", output, target)
        logp = F.log_softmax(output, dim=1)
        logp_t = logp.gather(1, target.long().unsqueeze(1)).squeeze(1)
        p_t = logp_t.exp()
        return (-((1.0 - p_t) ** self.gamma) * logp_t).mean()


class DiceLoss(nn.Module):
    """Soft dice, 1 - (2 Σ p·t + ε) / (Σ p + Σ t + ε), over the batch.

    p is softmax over channel 1 for several outputs (class-index or one-hot targets), sigmoid for one.
    A perfect prediction scores 0; ε keeps an empty target from dividing by zero.
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        multi = output.dim() >= 2 and output.shape[1] > 1
        probs = output.softmax(dim=1) if multi else output.sigmoid()
        t = _as_target_like(output, target)
        inter = (probs * t).sum()
        return 1.0 - (2.0 * inter + self.eps) / (probs.sum() + t.sum() + self.eps)


class ContrastiveLoss(nn.Module):
    """Pairwise contrastive loss (Hadsell, Chopra, LeCun 2006) over every pair in the batch.

    The model outputs embeddings (N, D); targets are labels (N,). A same-label pair costs d²,
    a different-label pair max(0, margin - d)², averaged over pairs.
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.shape[0] < 2:
            raise SetupError("contrastive: needs at least 2 samples per batch to form pairs")
        emb = output.flatten(1)
        i, j = torch.triu_indices(emb.shape[0], emb.shape[0], offset=1, device=emb.device)
        # The epsilon keeps the gradient of sqrt finite for identical embeddings.
        d = ((emb[i] - emb[j]).pow(2).sum(dim=1) + 1e-12).sqrt()
        same = (target.reshape(target.shape[0], -1)[i] == target.reshape(target.shape[0], -1)[j]).all(1)
        loss = torch.where(same, d.pow(2), (self.margin - d).clamp(min=0).pow(2))
        return loss.mean()


def make_loss(name: str, **kw: float) -> nn.Module:
    """A loss module called as loss(output, target)."""
    if name == "cross_entropy":
        return CrossEntropy()
    if name == "mse":
        return _TargetLike(F.mse_loss)
    if name == "bce_with_logits":
        return _TargetLike(F.binary_cross_entropy_with_logits)
    if name == "focal":
        return FocalLoss(gamma=kw.get("gamma", 2.0))
    if name == "dice":
        return DiceLoss()
    if name == "contrastive":
        return ContrastiveLoss(margin=kw.get("margin", 1.0))
    raise SetupError(f"--loss {name!r}: expected one of {', '.join(LOSSES)}")
