"""Built-in datasets: scikit-learn's bundled 8x8 digits (real, no download) and synthetic images."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset


def digits(val_fraction: float = 0.2, split_seed: int = 0) -> tuple[Dataset, Dataset]:
    """The 1,797 8x8 handwritten digits that ship inside scikit-learn, as (1, 8, 8) floats in
    [0, 1] and class indices, split into train and validation stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    idx = torch.arange(len(y)).numpy()
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=split_seed, stratify=y.numpy())
    return TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va])


class SyntheticImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images made on demand from their index (nothing held in memory), with a learnable label:
    each class adds its own fixed pattern to Gaussian noise."""

    def __init__(self, n: int, shape: tuple[int, ...], num_classes: int, seed: int) -> None:
        self.n, self.shape, self.num_classes, self.seed = n, shape, num_classes, seed

    def __len__(self) -> int:
        return self.n

    def _pattern(self, label: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1_000_003 * (label + 1))
        return torch.randn(self.shape, generator=g)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 7_919 + i)
        label = int(torch.randint(self.num_classes, (1,), generator=g))
        x = torch.randn(self.shape, generator=g) + 0.5 * self._pattern(label)
        return x, torch.tensor(label, dtype=torch.long)


def synthetic_images(
    n_train: int = 512, n_val: int = 128, shape: tuple[int, ...] = (3, 224, 224), num_classes: int = 1000
) -> tuple[Dataset, Dataset]:
    return (
        SyntheticImages(n_train, shape, num_classes, seed=1),
        SyntheticImages(n_val, shape, num_classes, seed=2),
    )
