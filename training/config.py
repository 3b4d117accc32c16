"""One training run's settings, shared by the checks, the studies and the bench."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from training.models import BUILTINS


@dataclass(frozen=True)
class TrainConfig:
    """None means "the built-in model's default, else the general one" (see `resolved`)."""

    model: str = "digits-cnn"
    data: str | None = None
    loss: str | None = None  # None: the task's default (cross_entropy for classes, mse otherwise)
    optimizer: str | None = None
    lr: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    seed: int = 0
    device: str = "auto"
    schedule: str = "constant"
    schedule_kw: dict[str, float] = field(default_factory=dict)
    weight_decay: float | None = None  # None: the optimizer's usual (0.01 for adamw, else 0)
    # At most this many optimizer steps per epoch (None: the whole training set), for quick runs.
    max_steps_per_epoch: int | None = None
    deterministic: bool = False  # torch.use_deterministic_algorithms on CUDA

    def resolved(self) -> TrainConfig:
        """Fill the Nones from the built-in's defaults (or adam, 1e-3, 32, 10)."""
        d: dict[str, Any] = {"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 10}
        if self.model in BUILTINS:
            d |= BUILTINS[self.model].defaults
        return replace(
            self,
            optimizer=self.optimizer or d["optimizer"],
            lr=self.lr if self.lr is not None else d["lr"],
            batch_size=self.batch_size or d["batch_size"],
            epochs=self.epochs or d["epochs"],
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
