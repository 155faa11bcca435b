"""Batch samplers: how examples are drawn into logical batches (one optimizer step each).

The accountants assume Poisson subsampling: every example joins every step independently with
probability q, so logical batch sizes vary. ``PoissonSampling`` does exactly that;
``ShuffleSampling`` is the common fixed-size shuffled batching, kept for comparison and flagged
by the privacy wiring as not matching the accounting. Splitting a logical batch into physical
batches (bounded memory) happens in the training strategy, not here.

Under data parallelism every sampler is built with its process's ``rank`` of ``world_size``.
Every rank draws the same global Poisson mask (the generator is seeded alike), so every rank
knows the whole logical batch, and takes every ``world_size``-th example of it. Each example
still joins each step independently with probability q, the union over ranks is exactly the
batch one process would draw with the same seed, all ranks take the same number of steps
(lockstep), and their shares differ by at most one example: no rank waits at the all-reduce for
a peer that happened to draw more (fixed per-rank shards, each sampled at rate q, would give
Binomial shares and a straggler every step).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from dpresearch.data.padding import PAD_INDEX


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size} is not a valid process")


class PoissonBatchSampler:
    """Yields ``steps_per_epoch`` logical batches per epoch, each a Poisson sample at rate q
    (this rank's shard of it)."""

    def __init__(
        self,
        num_samples: int,
        sample_rate: float,
        steps_per_epoch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        check_rank(rank, world_size)
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.steps_per_epoch = steps_per_epoch
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps_per_epoch):
            mask = torch.rand(self.num_samples, generator=self.generator) < self.sample_rate
            yield mask.nonzero(as_tuple=True)[0][self.rank :: self.world_size].tolist()

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
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(num_samples, sample_rate, steps_per_epoch, seed, rank, world_size)
        self.physical_batch_size = physical_batch_size

    def __iter__(self) -> Iterator[list[int]]:
        size = self.physical_batch_size
        for batch in super().__iter__():
            padded = max(1, -(-len(batch) // size)) * size
            yield batch + [PAD_INDEX] * (padded - len(batch))


class ShuffleBatchSampler:
    """Fixed-size batches from a fresh permutation each epoch (last partial batch dropped);
    under data parallelism each rank takes every ``world_size``-th example of a batch."""

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        check_rank(rank, world_size)
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.num_samples // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.num_samples, generator=self.generator)
        for i in range(len(self)):
            batch = perm[i * self.batch_size : (i + 1) * self.batch_size]
            yield batch[self.rank :: self.world_size].tolist()

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

    def build(self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1):
        """The batch sampler of process ``rank`` of ``world_size`` (one process: 0 of 1)."""
        raise NotImplementedError


@dataclass
class PoissonSampling(Sampling):
    name = "poisson"
    is_poisson = True

    def build(
        self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> PoissonBatchSampler:
        return PoissonBatchSampler(
            num_samples,
            self.sample_rate(num_samples),
            self.steps_per_epoch(num_samples),
            seed,
            rank,
            world_size,
        )


@dataclass
class MaskedPoissonSampling(PoissonSampling):
    """Poisson sampling padded to static shapes (for torch.compile and steady GPU kernels)."""

    name = "poisson_masked"

    def build(
        self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> MaskedPoissonBatchSampler:
        return MaskedPoissonBatchSampler(
            num_samples,
            self.sample_rate(num_samples),
            self.steps_per_epoch(num_samples),
            seed,
            self.max_physical_batch_size,
            rank,
            world_size,
        )


@dataclass
class ShuffleSampling(Sampling):
    name = "shuffle"
    is_poisson = False

    def steps_per_epoch(self, num_samples: int) -> int:
        self.check(num_samples)
        return num_samples // self.expected_batch_size

    def build(
        self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> ShuffleBatchSampler:
        self.check(num_samples)
        return ShuffleBatchSampler(num_samples, self.expected_batch_size, seed, rank, world_size)
