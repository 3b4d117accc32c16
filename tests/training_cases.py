"""Models and data built to break one training check each, as user files.

The tests copy this file (and its neighbour `training_blocks.py`) into a temporary folder and pass
`--model FOLDER/training_cases.py:FUNC`, so loading a user's file, with a neighbour import, is
what runs. Each function's docstring says what it breaks.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from training_blocks import (
    sigmoid_stack,  # a neighbour module, found because the file's folder is on the path
)

from training.data import digits


def deep_sigmoid() -> nn.Module:
    """Ten Linear+Sigmoid layers: the first layers' gradients vanish (sigmoid' <= 1/4 per layer)."""
    return nn.Sequential(nn.Flatten(), *sigmoid_stack(64, 64, 10), nn.Linear(64, 10))


class Detached(nn.Module):
    """A convolutional backbone whose output is detached: its parameters never get a gradient,
    while the linear head on its (random, frozen) features still learns."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).detach().flatten(1))


def detached() -> nn.Module:
    return Detached()


def random_labels() -> tuple[Dataset, Dataset]:
    """The digits with labels drawn at random: nothing to learn that generalises."""
    train, val = digits()
    g = torch.Generator().manual_seed(123)
    out = []
    for ds in (train, val):
        x, y = ds.tensors  # type: ignore[attr-defined]
        out.append(TensorDataset(x, torch.randint(10, y.shape, generator=g)))
    return out[0], out[1]


class IgnoresInput(nn.Module):
    """Returns learned constants whatever the input: it cannot fit a batch of different labels."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(10))
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.scale * self.logits).expand(x.shape[0], 10) + 0 * x.flatten(1)[:, :1]


def ignores_input() -> nn.Module:
    return IgnoresInput()


class Unseeded(nn.Module):
    """Dropout-like noise from the OS's entropy: the seed does not fix it, runs differ."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        noise = torch.rand(x.shape[0], 64, generator=g) * 0.5
        return self.fc(x.flatten(1) + noise)


def unseeded() -> nn.Module:
    return Unseeded()


class SeedLottery(nn.Module):
    """Unlucky on some seeds: when its first random draw is below 0.5 the logits are scaled by
    1e-5, so within a short budget it barely learns; on other seeds it trains normally."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = 1e-5 if float(torch.rand(1)) < 0.5 else 1.0
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def seed_lottery() -> nn.Module:
    return SeedLottery()


class CrashesMidRun(nn.Module):
    """Raises on its 30th forward pass, as a model with a bug on some code path would."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 30:
            raise RuntimeError("boom on call 30")
        return self.fc(x.flatten(1))


def crashes_mid_run() -> nn.Module:
    return CrashesMidRun()


def rgb_model() -> nn.Module:
    """Expects 3x32x32 images: does not fit the 1x8x8 digits."""
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))


def twelve_classes() -> tuple[Dataset, Dataset]:
    """Targets 0..11, for a model with 10 outputs."""
    x = torch.rand(40, 1, 8, 8)
    y = torch.arange(40) % 12
    return TensorDataset(x, y), TensorDataset(x, y)


def not_a_module() -> object:
    return "a string"


def not_datasets() -> object:
    return [1, 2, 3]


class Flaky(nn.Module):
    """Identity, except that its `at`-th forward in training mode returns NaN."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return h
        self.calls += 1
        return h * float("nan") if self.calls == self.at else h


class NanThenMasked(nn.Module):
    """A hidden activation turns NaN once, and nan_to_num hides it from the loss: only a watch on
    the activations sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 32)
        self.act = Flaky(at=12)
        self.out = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.nan_to_num(self.act(self.hidden(x.flatten(1)))))


def nan_then_masked() -> nn.Module:
    return NanThenMasked()
