"""Batch samplers: how examples are drawn into logical batches (one optimizer step each).

The accountants assume Poisson subsampling: every example joins every step independently with
probability q, so logical batch sizes vary. ``PoissonSampling`` does exactly that;
``ShuffleSampling`` is the common fixed-size shuffled batching, kept for comparison and flagged
by the privacy wiring as not matching the accounting. Splitting a logical batch into physical
batches (bounded memory) happens in the training strategy, not here.
``CyclicPoissonSampling`` is the sampler correlated noise (BandMF) is accounted for: the data
in b groups, step t Poisson-sampling only group t mod b.

Under data parallelism every sampler is built with its process's ``rank`` of ``world_size``.
Every rank draws the same global Poisson mask (the generator is seeded alike), so every rank
knows the whole logical batch, and takes every ``world_size``-th example of it. Each example
still joins each step independently with probability q, the union over ranks is exactly the
batch one process would draw with the same seed, all ranks take the same number of steps
(lockstep), and their shares differ by at most one example: no rank waits at the all-reduce for
a peer that happened to draw more (fixed per-rank shards, each sampled at rate q, would give
Binomial shares and a straggler every step).

Randomness (``privacy.randomness``): ``seeded`` samplers draw from a ``torch.Generator`` seeded
by the run's seed, so the seed reproduces every batch, and whoever knows it knows which steps
each example joined (which voids the amplification by subsampling the accountant counts on).
``secure`` samplers are given a secret 32-byte key instead (``os.urandom`` on rank 0, shared
with the other ranks in memory) and draw from a SHAKE-256 stream keyed by it: unpredictable,
never written to a record or checkpoint, the same on every rank.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from dpresearch.data.padding import PAD_INDEX


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size} is not a valid process")


Source = int | bytes  # a seed (reproducible) or a secret key (privacy.randomness=secure)


def new_secret_key() -> bytes:
    """32 bytes from the operating system's cryptographically secure generator."""
    return os.urandom(32)


class SecureStream:
    """Uniform 64-bit words from SHAKE-256(key || counter): a keyed cryptographic stream, so
    every rank holding the key draws the same words and nobody without it can predict them."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("a secure sampling key needs at least 16 bytes")
        self._key, self._counter = key, 0

    def words(self, n: int, counter: int | None = None) -> np.ndarray:
        """n words from the next block (or from block ``counter``, leaving the stream where it
        is: a draw keyed by a step's index)."""
        if counter is None:
            counter, self._counter = self._counter, self._counter + 1
        block = hashlib.shake_256(self._key + counter.to_bytes(8, "little")).digest(8 * n)
        return np.frombuffer(block, dtype=np.uint64)

    def bernoulli(self, n: int, p: float, counter: int | None = None) -> torch.Tensor:
        """n independent draws, each True with probability floor(p 2^64) / 2^64 (<= p)."""
        words = self.words(n, counter)
        if p >= 1.0:
            return torch.ones(n, dtype=torch.bool)
        return torch.from_numpy(words < np.uint64(int(p * 2.0**64)))

    def permutation(self, n: int) -> torch.Tensor:
        return torch.from_numpy(np.argsort(self.words(n), kind="stable").astype(np.int64))


class RandomSource:
    """The sampler's randomness: a seeded torch.Generator, or a SecureStream from a key.
    Only the seeded kind has a state worth checkpointing; a secure one is never saved."""

    def __init__(self, source: Source):
        self.secure = isinstance(source, bytes)
        self.stream = SecureStream(source) if self.secure else None
        self.seed = None if self.secure else int(source)
        self.generator = None if self.secure else torch.Generator().manual_seed(int(source))

    def bernoulli(self, n: int, p: float) -> torch.Tensor:
        if self.stream is not None:
            return self.stream.bernoulli(n, p)
        return torch.rand(n, generator=self.generator) < p

    def permutation(self, n: int) -> torch.Tensor:
        if self.stream is not None:
            return self.stream.permutation(n)
        return torch.randperm(n, generator=self.generator)

    def key(self, purpose: str) -> bytes:
        """A 32-byte key for ``purpose``, derived from the seed or the secret key."""
        root = self.stream._key if self.stream is not None else str(self.seed).encode()
        return hashlib.blake2b(purpose.encode(), key=root[:64], digest_size=32).digest()

    def bernoulli_at(self, step: int, n: int, p: float) -> torch.Tensor:
        """The draws of step ``step``: a function of the step's index alone (not of how many
        draws came before), so a step's batch is the same whatever was prefetched or resumed."""
        if self.stream is not None:
            return SecureStream(self.key("steps")).bernoulli(n, p, counter=step)
        digest = hashlib.blake2b(step.to_bytes(8, "little"), key=self.key("steps"), digest_size=8)
        generator = torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)
        return torch.rand(n, generator=generator) < p

    def state_dict(self) -> dict:
        if self.secure:
            return {"secure": True}  # the key and counter stay in memory only
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if self.secure:
            return  # a resumed secure run draws from a fresh secret key
        if "generator" not in state:
            raise ValueError(
                "the checkpoint's sampler drew from a secret key (privacy.randomness=secure): "
                "there is no seeded stream to continue; resume with privacy.randomness=secure"
            )
        self.generator.set_state(state["generator"])


class BatchSampler:
    """What every batch sampler shares: this process's place among the ranks, and a random
    source whose state (seeded only) goes into checkpoints."""

    def __init__(self, num_samples: int, seed: Source, rank: int = 0, world_size: int = 1):
        check_rank(rank, world_size)
        self.num_samples = num_samples
        self.rank, self.world_size = rank, world_size
        self.random = RandomSource(seed)

    def shard(self, batch: torch.Tensor) -> list[int]:
        """This rank's share of a logical batch: every ``world_size``-th example."""
        return batch[self.rank :: self.world_size].tolist()

    def state_dict(self) -> dict:
        return self.random.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if "users" in state:  # a UserBatchSampler's state
            raise ValueError(
                "the checkpoint's sampler drew users (privacy.unit=user): resume with "
                "privacy.unit=user, or start a new run"
            )
        self.random.load_state_dict(state)


class PoissonBatchSampler(BatchSampler):
    """Yields ``steps_per_epoch`` logical batches per epoch, each a Poisson sample at rate q
    (this rank's shard of it)."""

    def __init__(
        self,
        num_samples: int,
        sample_rate: float,
        steps_per_epoch: int,
        seed: Source,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(num_samples, seed, rank, world_size)
        self.sample_rate = sample_rate
        self.steps_per_epoch = steps_per_epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps_per_epoch):
            mask = self.random.bernoulli(self.num_samples, self.sample_rate)
            yield self.shard(mask.nonzero(as_tuple=True)[0])


class MaskedPoissonBatchSampler(PoissonBatchSampler):
    """The same Poisson batches, padded with ``PAD_INDEX`` to whole physical batches of one
    static size (at least one), so every forward pass sees the same shape."""

    def __init__(
        self,
        num_samples: int,
        sample_rate: float,
        steps_per_epoch: int,
        seed: Source,
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


class ShuffleBatchSampler(BatchSampler):
    """Fixed-size batches from a fresh permutation each epoch (last partial batch dropped);
    under data parallelism each rank takes every ``world_size``-th example of a batch."""

    def __init__(
        self, num_samples: int, batch_size: int, seed: Source, rank: int = 0, world_size: int = 1
    ):
        super().__init__(num_samples, seed, rank, world_size)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return self.num_samples // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.random.permutation(self.num_samples)
        for i in range(len(self)):
            batch = perm[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.shard(batch)


PUBLIC_GROUPS_KEY = b"dpresearch cyclic Poisson groups"  # secure runs: see example_groups


def example_groups(dataset: Dataset, groups: int, random: RandomSource) -> torch.Tensor:
    """Each example's group in 0..groups-1, from a keyed hash of its own content (inputs and
    label). Adding or removing one example changes no other example's group, as the
    add/remove neighbouring relation of the accountant requires; a split by position would
    move every later example. Equal examples share a group.

    The key follows the seed in a seeded run. A secure run uses a fixed public key: the
    partition need not be secret (the amplification comes from the Poisson draws within a
    group, which stay secret), but it must not change when a resumed run draws a fresh secret
    key, or an example could join two groups' steps."""
    fields = dataset.x.values() if isinstance(dataset.x, dict) else [dataset.x]
    rows = [np.ascontiguousarray(t.numpy()).reshape(len(t), -1) for t in (*fields, dataset.y)]
    key = PUBLIC_GROUPS_KEY if random.secure else random.key("groups")
    out = np.empty(len(dataset), dtype=np.int64)
    for i in range(len(dataset)):
        h = hashlib.blake2b(key=key, digest_size=8)
        for r in rows:
            h.update(r[i].tobytes())
        out[i] = int.from_bytes(h.digest(), "little") % groups
    return torch.from_numpy(out)


class CyclicPoissonBatchSampler(BatchSampler):
    """Cyclic Poisson sampling (Choquette-Choo et al. 2023, "Amplified banded matrix
    factorization", Alg. 2): the examples fall into ``periods`` groups; step t Poisson-samples
    group t mod periods only, each member with probability ``sample_rate``. An example can
    join only steps of its residue, so any two of its steps are at least ``periods`` apart.

    Step t's batch is a function of t alone: the first step of each pass over the sampler is
    read from ``step_source`` (the trainer's global step, set by the data module), so a
    prefetched batch that is never trained on, ``limit_train_batches`` or a mid-epoch resume
    cannot shift a group onto a step of another residue. Without a trainer it counts from 0."""

    def __init__(
        self,
        groups: torch.Tensor,
        periods: int,
        sample_rate: float,
        steps_per_epoch: int,
        seed: Source,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(len(groups), seed, rank, world_size)
        self.periods, self.sample_rate = periods, sample_rate
        self.steps_per_epoch = steps_per_epoch
        self.members = [torch.nonzero(groups == g, as_tuple=True)[0] for g in range(periods)]
        self.step_source: Callable[[], int] | None = None
        self._next = 0  # without a step source: the step after the last one drawn

    def __len__(self) -> int:
        return self.steps_per_epoch

    def batch_at(self, step: int) -> list[int]:
        members = self.members[step % self.periods]
        mask = self.random.bernoulli_at(step, len(members), self.sample_rate)
        return self.shard(members[mask])

    def __iter__(self) -> Iterator[list[int]]:
        first = int(self.step_source()) if self.step_source is not None else self._next
        for step in range(first, first + self.steps_per_epoch):
            self._next = step + 1
            yield self.batch_at(step)


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

    participation_period = 1  # any two steps one example joins are at least this far apart

    def participations(self, steps: int) -> int:
        """The most steps one example can join among the first ``steps``: what the
        accountant composes, each at ``sample_rate``."""
        return math.ceil(steps / self.participation_period)

    def build(self, num_samples: int, seed: Source, rank: int = 0, world_size: int = 1,
              dataset: Dataset | None = None):  # fmt: skip
        """The batch sampler of process ``rank`` of ``world_size`` (one process: 0 of 1);
        ``seed`` an int, or a secret key (bytes) for secure randomness. ``dataset``: the
        training examples, for samplers that read them (cyclic Poisson's groups)."""
        raise NotImplementedError


@dataclass
class PoissonSampling(Sampling):
    name = "poisson"
    is_poisson = True

    def build(
        self, num_samples: int, seed: Source, rank: int = 0, world_size: int = 1,
        dataset: Dataset | None = None,
    ) -> PoissonBatchSampler:  # fmt: skip
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
        self, num_samples: int, seed: Source, rank: int = 0, world_size: int = 1,
        dataset: Dataset | None = None,
    ) -> MaskedPoissonBatchSampler:  # fmt: skip
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
        self, num_samples: int, seed: Source, rank: int = 0, world_size: int = 1,
        dataset: Dataset | None = None,
    ) -> ShuffleBatchSampler:  # fmt: skip
        self.check(num_samples)
        return ShuffleBatchSampler(num_samples, self.expected_batch_size, seed, rank, world_size)


@dataclass
class CyclicPoissonSampling(Sampling):
    """Cyclic Poisson sampling in ``groups`` groups (``CyclicPoissonBatchSampler``): the
    sampler BandMF's amplification is proven for. One example joins at most ceil(T / groups)
    of T steps, each with probability groups * E / N; the expected batch stays E."""

    groups: int | str = 1  # or "max": N // E groups, each example in one step an epoch

    name = "cyclic_poisson"
    is_poisson = True  # Poisson within the step's group: what the accountant composes

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.groups != "max" and not (isinstance(self.groups, int) and self.groups >= 1):
            raise ValueError(f"sampler.groups must be an integer >= 1 or max, got {self.groups!r}")
        self._resolved = None if self.groups == "max" else int(self.groups)

    @property
    def participation_period(self) -> int:  # type: ignore[override]
        if self._resolved is None:
            raise RuntimeError("sampler.groups=max: sample_rate(N) resolves it first")
        return self._resolved

    def sample_rate(self, num_samples: int) -> float:
        self.check(num_samples)
        if self.groups == "max":
            self._resolved = max(1, num_samples // self.expected_batch_size)
        groups = self._resolved
        rate = groups * self.expected_batch_size / num_samples
        if rate > 1:
            raise ValueError(
                f"sampler.groups={groups} with sampler.expected_batch_size="
                f"{self.expected_batch_size} asks each group of about "
                f"{num_samples // groups} examples for {self.expected_batch_size} a step: "
                f"lower sampler.groups to at most {num_samples // self.expected_batch_size} "
                "(N / expected batch size; or max), or lower the batch size"
            )
        return rate

    def build(
        self, num_samples: int, seed: Source, rank: int = 0, world_size: int = 1,
        dataset: Dataset | None = None,
    ) -> CyclicPoissonBatchSampler:  # fmt: skip
        if dataset is None or len(dataset) != num_samples:
            raise ValueError("cyclic Poisson sampling needs the training examples (dataset=)")
        rate = self.sample_rate(num_samples)
        check_rank(rank, world_size)
        period = self.participation_period
        groups = example_groups(dataset, period, RandomSource(seed))
        return CyclicPoissonBatchSampler(
            groups, period, rate, self.steps_per_epoch(num_samples), seed, rank, world_size
        )
