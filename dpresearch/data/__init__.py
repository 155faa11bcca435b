"""Datasets as LightningDataModules, and the samplers that draw their training batches."""

from dpresearch.data.base import ClassificationDataModule, DataError
from dpresearch.data.samplers import PoissonSampling, Sampling, ShuffleSampling

__all__ = [
    "ClassificationDataModule",
    "DataError",
    "PoissonSampling",
    "Sampling",
    "ShuffleSampling",
]
