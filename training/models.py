"""Models and data by name: built-ins, or the user's `FILE.py:FUNC`.

`resolve_model` and `resolve_data` take the same strings the CLI does, so a worker process can
rebuild a model from its spec alone (the studies send specs, never pickled modules).
"""

from __future__ import annotations

import importlib.util
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from training import data as _data
from training.errors import SetupError


@dataclass(frozen=True)
class Task:
    """What a dataset asks of a model: its default loss and how it is scored."""

    kind: Literal["classification", "regression"]
    num_classes: int | None = None
    loss: str = "cross_entropy"

    @property
    def metric(self) -> str:
        """accuracy for classifiers (higher is better), mse for regression (lower is better)."""
        return "accuracy" if self.kind == "classification" else "mse"


class DigitsCNN(nn.Module):
    """A small CNN for 1x8x8 digits: two 3x3 convolutions, a pool, two linear layers."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _resnet18() -> nn.Module:
    from server.builtin_nets import ResNet18  # defined once, with the served built-in

    return ResNet18(num_classes=1000)


@dataclass(frozen=True)
class Builtin:
    name: str
    description: str
    model: Callable[[], nn.Module]
    data: Callable[[], tuple[Dataset, Dataset]]
    task: Task
    input_shape: tuple[int, ...]
    # Training settings a run uses for this model when the user gives none.
    defaults: dict[str, Any] = field(default_factory=dict)


BUILTINS: dict[str, Builtin] = {
    "digits-cnn": Builtin(
        "digits-cnn",
        "small CNN on scikit-learn's bundled 8x8 digits (1,437 train / 360 validation)",
        DigitsCNN,
        _data.digits,
        Task("classification", 10, "cross_entropy"),
        (1, 8, 8),
        {"epochs": 10, "batch_size": 32, "lr": 1e-3, "optimizer": "adam"},
    ),
    "resnet18": Builtin(
        "resnet18",
        "ResNet-18 on synthetic 3x224x224 images (1,000 classes), for throughput",
        _resnet18,
        _data.synthetic_images,
        Task("classification", 1000, "cross_entropy"),
        (3, 224, 224),
        {"epochs": 1, "batch_size": 32, "lr": 0.1, "optimizer": "sgd_momentum"},
    ),
}


def load_callable(spec: str, what: str) -> Callable[[], Any]:
    """`FILE.py:FUNC` → FUNC, with FILE.py loaded as a script would be (its folder on sys.path)."""
    file, sep, func = spec.rpartition(":")
    if not sep or not file or not func:
        raise SetupError(f"--{what} {spec!r}: expected a built-in ({', '.join(BUILTINS)}) or FILE.py:FUNC")
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise SetupError(f"--{what} {spec!r}: file {file} does not exist")
    if path.suffix != ".py":
        raise SetupError(f"--{what} {spec!r}: {file} is not a .py file")
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    # One module per file path, so two user files with one basename do not shadow each other.
    mod_name = f"_modelsoak_user_{path.stem}_{zlib.crc32(str(path).encode()):08x}"
    module = sys.modules.get(mod_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise SetupError(f"--{what} {spec!r}: cannot load {file} as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[mod_name]
            raise SetupError(f"--{what} {spec!r}: importing {file} raised {type(e).__name__}: {e}") from e
    fn = getattr(module, func, None)
    if fn is None:
        raise SetupError(f"--{what} {spec!r}: {file} has no function {func!r}")
    if not callable(fn):
        raise SetupError(f"--{what} {spec!r}: {func} in {file} is not callable")
    return fn


def _call(spec: str, what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except SetupError:
        raise
    except Exception as e:
        raise SetupError(f"--{what} {spec!r}: calling it raised {type(e).__name__}: {e}") from e


def resolve_model(spec: str) -> nn.Module:
    """A fresh model from a built-in name or FILE.py:FUNC (FUNC() must return an nn.Module)."""
    if spec in BUILTINS:
        return BUILTINS[spec].model()
    model = _call(spec, "model", load_callable(spec, "model"))
    if not isinstance(model, nn.Module):
        raise SetupError(f"--model {spec!r}: returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _check_dataset(spec: str, name: str, ds: Any) -> None:
    if not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
        raise SetupError(
            f"--data {spec!r}: the {name} dataset is a {type(ds).__name__}; expected a map-style "
            "torch Dataset (with __len__ and __getitem__)"
        )
    if len(ds) == 0:
        raise SetupError(f"--data {spec!r}: the {name} dataset is empty")
    item = ds[0]
    if not (isinstance(item, tuple | list) and len(item) == 2):
        raise SetupError(
            f"--data {spec!r}: {name}[0] is a {type(item).__name__}; expected an (input, target) pair"
        )
    if not isinstance(item[0], torch.Tensor):
        raise SetupError(
            f"--data {spec!r}: {name}[0]'s input is a {type(item[0]).__name__}; expected a Tensor"
        )


def resolve_data(spec: str | None, model_spec: str) -> tuple[Dataset, Dataset]:
    """(train, val) from a built-in name or FILE.py:FUNC; without a spec, the built-in model's own."""
    if spec is None:
        if model_spec not in BUILTINS:
            raise SetupError(
                f"--model {model_spec!r} is not a built-in, so --data FILE.py:FUNC is required "
                "(FUNC() returns (train_dataset, val_dataset))"
            )
        return BUILTINS[model_spec].data()
    if spec in BUILTINS:
        return BUILTINS[spec].data()
    out = _call(spec, "data", load_callable(spec, "data"))
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise SetupError(
            f"--data {spec!r}: returned {type(out).__name__}; expected (train_dataset, val_dataset)"
        )
    for name, ds in zip(("train", "val"), out, strict=True):
        _check_dataset(spec, name, ds)
    return out[0], out[1]


def infer_task(data_spec: str | None, model_spec: str, train: Dataset, scan: int = 4096) -> Task:
    """The built-in's task, else guessed from the targets: integer scalars → classification."""
    name = data_spec if data_spec is not None else model_spec
    if name in BUILTINS:
        return BUILTINS[name].task
    n = min(len(train), scan)  # type: ignore[arg-type]
    targets = [torch.as_tensor(train[i][1]) for i in range(n)]
    if all(t.dim() == 0 and not torch.is_floating_point(t) for t in targets):
        hi, lo = max(int(t) for t in targets), min(int(t) for t in targets)
        if lo < 0:
            raise SetupError(f"--data {data_spec!r}: class targets must be >= 0, found {lo}")
        return Task("classification", hi + 1, "cross_entropy")
    return Task("regression", None, "mse")
