"""Forward hooks: the order a forward pass reaches the parameters, and the first layer whose
output is not finite."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def forward_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Trainable parameter names in the order modules run (registration order can differ)."""
    seen: list[str] = []
    owners = {id(m): name for name, m in model.named_modules()}
    handles = []

    def hook(mod: nn.Module, _inp: Any, _out: Any) -> None:
        prefix = owners[id(mod)]
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{prefix}.{pname}" if prefix else pname
            if p.requires_grad and full not in seen:
                seen.append(full)

    for m in model.modules():
        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(x)
    finally:
        for h in handles:
            h.remove()
    rest = [
        n for n, p in model.named_parameters() if p.requires_grad and n not in seen
    ]  # used outside any module's forward
    return seen + rest


class ActivationWatch:
    """Forward hooks that note the first module (in call order) whose output is not finite.

    nan_only: flag NaN but not ±inf, for the watch on every step: -inf is a legitimate mask
    value (attention), while NaN never is.
    """

    def __init__(self, model: nn.Module, nan_only: bool = False) -> None:
        self.first_bad: str | None = None
        self.nan_only = nan_only
        self._handles = [
            m.register_forward_hook(self._hook(name)) for name, m in model.named_modules() if name
        ]

    def _hook(self, name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            floating = isinstance(out, torch.Tensor) and out.is_floating_point()
            if self.first_bad is None and floating:
                bad = bool(torch.isnan(out).any()) if self.nan_only else not bool(torch.isfinite(out).all())
                if bad:
                    self.first_bad = name

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
