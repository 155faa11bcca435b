"""scikit-learn's handwritten digits: 1,797 real 8x8 images, shipped with the package (offline)."""

from __future__ import annotations

import torch

from dpresearch.data.augmentation import random_shift
from dpresearch.data.base import ClassificationDataModule, normalizer


class DigitsDataModule(ClassificationDataModule):
    """Digits with a fixed 20% test split; pixel values 0..16 normalized."""

    name = "digits"
    num_classes = 10
    input_shape = (1, 8, 8)

    def __init__(self, *args, test_fraction: float = 0.2, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 < test_fraction < 1.0:  # 0 would leave no test set: test_accuracy null
            raise ValueError(f"dataset.test_fraction must be in (0, 1), got {test_fraction}")
        self.test_fraction = test_fraction
        self._transform = normalizer([0.3], [0.38], scale=16.0)

    def load(self):
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1)
        y = torch.tensor(data.target, dtype=torch.long)
        # The test split is drawn with its own fixed generator so that it never moves with
        # the train/val split seed.
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(12345))
        n_test = int(round(self.test_fraction * len(x)))
        test, rest = perm[:n_test], perm[n_test:]
        return x[rest], y[rest], x[test], y[test]

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return self._transform(x)

    def augmentation(self, x: torch.Tensor) -> torch.Tensor:
        """dataset.augment=true: each image shifted by up to one pixel each way (of 8)."""
        return random_shift(x, 1)
