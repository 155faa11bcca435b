"""Batch samplers: how examples are drawn into logical batches (one optimizer step each).

The accountants assume Poisson subsampling: every example joins every step independently with
probability q, so logical batch sizes vary. ``PoissonSampling`` does exactly that;
``ShuffleSampling`` is the common fixed-size shuffled batching, kept for comparison and flagged
by the privacy wiring as not matching the accounting. Splitting a logical batch into physical
batches (bounded memory) happens in the training strategy, not here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from dpresearch.data.padding import PAD_INDEX


class PoissonBatchSampler:
    """Yields ``steps_per_epoch`` logical batches per epoch, each a Poisson sample at rate q."""

    def __init__(self, num_samples: int, sample_rate: float, steps_per_epoch: int, seed: int):
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.steps_per_epoch = steps_per_epoch
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps_per_epoch):
            mask = torch.rand(self.num_samples, generator=self.generator) < self.sample_rate
            yield mask.nonzero(as_tuple=True)[0].tolist()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class MaskedPoissonBatchSampler(PoissonBatchSampler):
    """The same Poisson batches, padded with ``PAD_INDEX`` to whole physical batches of one
    static size (at least one), so every forward pass sees the same shape."""

    def __init__(
        self,
        num_samples: int,
        sample_rate: float,
        steps_per_epoch: int,
        seed: int,
        physical_batch_size: int,
    ):
        super().__init__(num_samples, sample_rate, steps_per_epoch, seed)
        self.physical_batch_size = physical_batch_size

    def __iter__(self) -> Iterator[list[int]]:
        size = self.physical_batch_size
        for batch in super().__iter__():
            padded = max(1, -(-len(batch) // size)) * size
            yield batch + [PAD_INDEX] * (padded - len(batch))


class ShuffleBatchSampler:
    """Fixed-size batches from a fresh permutation each epoch (last partial batch dropped)."""

    def __init__(self, num_samples: int, batch_size: int, seed: int):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.num_samples // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.num_samples, generator=self.generator)
        for i in range(len(self)):
            yield perm[i * self.batch_size : (i + 1) * self.batch_size].tolist()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


@dataclass
class Sampling:
    """Config of a sampler (the ``sampler`` group); builds the batch sampler once N is known."""

    expected_batch_size: int = 64
    max_physical_batch_size: int = 256

    name = "base"
    is_poisson = False

    def __post_init__(self) -> None:
        if self.expected_batch_size < 1:
            raise ValueError(
                f"sampler.expected_batch_size must be >= 1, got {self.expected_batch_size}"
            )
        if self.max_physical_batch_size < 1:
            raise ValueError(
                f"sampler.max_physical_batch_size must be >= 1, got {self.max_physical_batch_size}"
            )

    def check(self, num_samples: int) -> None:
        if self.expected_batch_size > num_samples:
            raise ValueError(
                f"sampler.expected_batch_size={self.expected_batch_size} exceeds the "
                f"{num_samples} training examples; lower sampler.expected_batch_size"
            )

    def sample_rate(self, num_samples: int) -> float:
        self.check(num_samples)
        return self.expected_batch_size / num_samples

    def steps_per_epoch(self, num_samples: int) -> int:
        self.check(num_samples)
        return max(1, round(num_samples / self.expected_batch_size))

    def build(self, num_samples: int, seed: int):
        raise NotImplementedError


@dataclass
class PoissonSampling(Sampling):
    name = "poisson"
    is_poisson = True

    def build(self, num_samples: int, seed: int) -> PoissonBatchSampler:
        return PoissonBatchSampler(
            num_samples,
            self.sample_rate(num_samples),
            self.steps_per_epoch(num_samples),
            seed,
        )


@dataclass
class MaskedPoissonSampling(PoissonSampling):
    """Poisson sampling padded to static shapes (for torch.compile and steady GPU kernels)."""

    name = "poisson_masked"

    def build(self, num_samples: int, seed: int) -> MaskedPoissonBatchSampler:
        return MaskedPoissonBatchSampler(
            num_samples,
            self.sample_rate(num_samples),
            self.steps_per_epoch(num_samples),
            seed,
            self.max_physical_batch_size,
        )


@dataclass
class ShuffleSampling(Sampling):
    name = "shuffle"
    is_poisson = False

    def steps_per_epoch(self, num_samples: int) -> int:
        self.check(num_samples)
        return num_samples // self.expected_batch_size

    def build(self, num_samples: int, seed: int) -> ShuffleBatchSampler:
        self.check(num_samples)
        return ShuffleBatchSampler(num_samples, self.expected_batch_size, seed)
