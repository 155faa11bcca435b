"""MNIST-1D (Greydanus 2020): generated procedurally by the ``mnist1d`` package, no download."""

from __future__ import annotations

import torch

from dpresearch.data.augmentation import random_shift
from dpresearch.data.base import ClassificationDataModule


class MNIST1DDataModule(ClassificationDataModule):
    """4,000 train + 1,000 test sequences of length 40; ``generator_seed`` fixes the data."""

    name = "mnist1d"
    num_classes = 10
    input_shape = (1, 40)

    def __init__(self, *args, generator_seed: int = 42, num_samples: int = 5000, **kwargs):
        super().__init__(*args, **kwargs)
        self.generator_seed = generator_seed
        self.num_samples = num_samples

    def load(self):
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.seed = self.generator_seed
        args.num_samples = self.num_samples
        data = make_dataset(args)  # make_dataset, never get_dataset (which downloads)

        def tensors(x, y):
            return torch.tensor(x, dtype=torch.float32).unsqueeze(1), torch.tensor(y).long()

        return (*tensors(data["x"], data["y"]), *tensors(data["x_test"], data["y_test"]))

    def augmentation(self, x: torch.Tensor) -> torch.Tensor:
        """dataset.augment=true: each sequence shifted by up to 3 positions (of 40), as the
        generator itself shifts its templates."""
        return random_shift(x, 3)
