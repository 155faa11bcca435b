"""The in-memory classification DataModule every dataset family builds on.

Datasets here fit in memory as tensors, so a batch is one fancy-index (``__getitems__``), not
thousands of ``__getitem__`` calls: a 4,096-example Poisson batch costs microseconds to gather.
Splits are fixed by ``split_seed``; the test split is touched only by ``trainer.test``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from dpresearch.data.augmentation import with_views
from dpresearch.data.padding import PAD_INDEX, PAD_LABEL
from dpresearch.data.samplers import Sampling, Source, new_secret_key
from dpresearch.privacy.units import UnitBatch


class DataError(RuntimeError):
    """Data that cannot be had as configured (the message names the folder and the flag)."""


Inputs = torch.Tensor | dict[str, torch.Tensor]


def take(x: Inputs, index: torch.Tensor) -> Inputs:
    """Rows ``index`` of a tensor, or of every tensor of a dict (e.g. input_ids, attention_mask)."""
    if isinstance(x, dict):
        return {k: v[index] for k, v in x.items()}
    return x[index]


def _zero_rows(x: Inputs, rows: torch.Tensor) -> None:
    for v in x.values() if isinstance(x, dict) else [x]:
        v[rows] = 0


class TensorSet(Dataset):
    """Examples as tensors (or dicts of tensors, for text); ``transform`` turns a stored batch
    (e.g. uint8) into model input."""

    def __init__(self, x: Inputs, y: torch.Tensor, transform: Callable | None = None):
        sizes = {len(v) for v in (x.values() if isinstance(x, dict) else [x])}
        if sizes != {len(y)}:
            raise ValueError(f"{sorted(sizes)} inputs but {len(y)} labels")
        self.x, self.y, self.transform = x, y, transform
        self.users: torch.Tensor | None = None  # each example's user (user-level DP)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]):
        """The rows ``idx``; a batch sampler that groups rows into privacy units (users)
        gives each row's unit as ``idx.unit_ids``, and the rows come as a ``UnitBatch``."""
        batch = self._rows(torch.as_tensor(idx, dtype=torch.long))
        unit_ids = getattr(idx, "unit_ids", None)
        return batch if unit_ids is None else UnitBatch(batch, torch.as_tensor(unit_ids))

    def _rows(self, index: torch.Tensor):
        pad = index == PAD_INDEX
        if not pad.any():
            x = take(self.x, index)
            return (self.transform(x) if self.transform else x), self.y[index]
        x, y = take(self.x, index.clamp(min=0)), self.y[index.clamp(min=0)]
        _zero_rows(x, pad)  # padding: zero input, ignored label
        y[pad] = PAD_LABEL
        return (self.transform(x) if self.transform else x), y


def synthetic_users(n: int, users: int, skew: float, seed: int) -> torch.Tensor:
    """``n`` examples' user ids in 0..users-1: user u drawn with probability proportional to
    (u + 1)^-skew (0: uniform; 1: Zipf-like, a few users hold many examples)."""
    weights = torch.arange(1, users + 1, dtype=torch.float64).pow(-skew)
    generator = torch.Generator().manual_seed(seed + 7919)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def _identity_collate(batch):
    return batch


def normalizer(mean: list[float], std: list[float], scale: float = 255.0) -> Callable:
    """Stored images (N, C, H, W), e.g. uint8 -> float, normalized per channel."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)

    def transform(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / scale - m) / s

    return transform


class ClassificationDataModule(pl.LightningDataModule):
    """Train/val/test splits of an in-memory dataset, with the configured batch sampler."""

    num_classes: int
    input_shape: tuple[int, ...]
    name: str = "dataset"
    label_source: str | None = "the dataset's definition"  # not read from private records

    def __init__(
        self,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        eval_batch_size: int = 512,
        augment: bool = False,
        public_validation: bool = False,
        users: int | None = None,
        user_skew: float = 0.0,
    ):
        super().__init__()
        # Synthetic users for user-level DP experiments: each training example gets one of
        # ``users`` users, drawn with probability ~ (rank + 1)^-user_skew (0: uniform).
        if users is not None and not (isinstance(users, int) and users >= 1):
            raise ValueError(f"dataset.users must be an integer >= 1 or null, got {users!r}")
        if not (isinstance(user_skew, (int, float)) and user_skew >= 0):
            raise ValueError(f"dataset.user_skew must be a number >= 0, got {user_skew!r}")
        self.users, self.user_skew = users, float(user_skew)
        # The validation split is carved from the same pool as the training set. Declared
        # public, its metrics may be released as they are; otherwise they are non-private
        # releases about the pool's people, marked so in every record.
        self.public_validation = bool(public_validation)
        if not (0.0 < val_fraction < 1.0):
            raise ValueError(f"dataset.val_fraction must be in (0, 1), got {val_fraction}")
        self.sampler: Sampling | None = None
        self.sampler_seed: int | None = 0
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.eval_batch_size = eval_batch_size
        self.augment = augment
        self.train_set: TensorSet | None = None
        self.train_batch_sampler = None
        self._restored_sampler: dict | None = None
        self._synthetic: int | None = None
        self.views = 1  # augmentation multiplicity: set from privacy.augmentations

    def attach_views(self, views: int) -> None:
        """Train on ``views`` augmented views of each sampled example, averaged per example
        before clipping (privacy.augmentations); views of one example are identical copies
        without augmentation, so that is refused."""
        if views > 1 and not self.augment:
            raise ValueError(
                f"privacy.augmentations={views} averages {views} augmented views of each example, "
                f"but dataset.augment=false would make them identical copies: set "
                "dataset.augment=true (or privacy.augmentations=1)"
            )
        self.views = views

    def attach_sampler(self, sampler: Sampling, seed: int | None) -> None:
        """How training batches are drawn (the ``sampler`` group): seeded by the run, or with
        ``seed=None`` from a secret key that no record holds (privacy.randomness=secure)."""
        self.sampler, self.sampler_seed = sampler, seed

    def _sampler_source(self) -> Source:
        """The seed, or a fresh secret key drawn on rank 0 and given to every rank in memory
        (all ranks must draw the same global Poisson mask)."""
        if self.sampler_seed is not None:
            return self.sampler_seed
        key = new_secret_key()
        if self.trainer is not None and self.trainer.world_size > 1:
            key = self.trainer.strategy.broadcast(key, src=0)
        return key

    def model_kwargs(self) -> dict:
        """What the model needs to know about the data (passed when the model is built)."""
        return {"num_classes": self.num_classes, "in_channels": self.input_shape[0]}

    def synthetic_batch(self, n: int, seed: int) -> tuple[Inputs, torch.Tensor]:
        """Random inputs of the dataset's shape and random labels (benchmarks: no data needed)."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, *self.input_shape, generator=g)
        return x, torch.randint(0, self.num_classes, (n,), generator=g)

    def use_synthetic(self, n: int) -> None:
        """Train on ``n`` random examples of the dataset's shape instead of its records
        (``synthetic_batch``; validation and test get their own): the benchmark trains the real
        path without reading or downloading data. Call before ``setup``."""
        if n < 1:
            raise ValueError(f"a synthetic training set needs at least 1 example, got {n}")
        self._synthetic = n

    def check_batch(self, n: int = 5, seed: int = 0) -> tuple[Inputs, torch.Tensor]:
        """The engine self-check's examples: random inputs of the dataset's shapes and dtypes
        from a public seed (no record is read), the last one a padding example."""
        x, y = self.synthetic_batch(n, seed)
        y[-1] = PAD_LABEL
        return x, y

    # Subclasses provide the raw arrays and how to turn a stored batch into model input.
    def load(self) -> tuple[Inputs, torch.Tensor, Inputs, torch.Tensor]:
        """(x_train_and_val, y_train_and_val, x_test, y_test) as stored (any dtype)."""
        raise NotImplementedError

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()

    def augmentation(self, x: torch.Tensor) -> torch.Tensor:
        """Training-time augmentation of a batch on its device; identity unless overridden."""
        return x

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self._synthetic is not None:
            self._setup_synthetic(self._synthetic)
            return
        x, y, x_test, y_test = self.load()
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        n_val = max(1, int(round(self.val_fraction * len(y))))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        self.train_set = TensorSet(take(x, train_idx), y[train_idx], self.transform)
        self.val_set = TensorSet(take(x, val_idx), y[val_idx], self.transform)
        self.test_set = TensorSet(x_test, y_test, self.transform)
        users = self.example_users(train_idx)
        if users is not None:
            self.train_set.users = users
        if self.sampler is None:
            raise RuntimeError("attach_sampler(...) before setup(): no training sampler")

    def _setup_synthetic(self, n: int) -> None:
        if self.sampler is None:
            raise RuntimeError("attach_sampler(...) before setup(): no training sampler")
        evaluation = min(n, self.eval_batch_size)
        self.train_set = TensorSet(*self.synthetic_batch(n, 0))
        self.val_set = TensorSet(*self.synthetic_batch(evaluation, 1))
        self.test_set = TensorSet(*self.synthetic_batch(evaluation, 2))

    def example_users(self, train_idx: torch.Tensor) -> torch.Tensor | None:
        """Each training example's user id (None: the data has no users). Here synthetic,
        from ``dataset.users`` and ``dataset.user_skew``, fixed by ``split_seed``; a dataset
        whose records name their users overrides this."""
        if self.users is None:
            return None
        return synthetic_users(len(train_idx), self.users, self.user_skew, self.split_seed)

    @property
    def num_users(self) -> int | None:
        """Users with at least one training example (the accountant's population under
        user-level DP); None when the data has no users."""
        if self.train_set is None:
            self.setup("fit")
        users = self.train_set.users
        return None if users is None else len(torch.unique(users))

    @property
    def num_train(self) -> int:
        if self.train_set is None:
            self.setup("fit")
        return len(self.train_set)

    def _rank(self) -> tuple[int, int]:
        """(rank, world size) of this process; known once a Trainer has launched its processes."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        built = self.train_batch_sampler
        if built is None or (built.rank, built.world_size) != (rank, world):
            self.train_batch_sampler = self.sampler.build(
                len(self.train_set), self._sampler_source(), rank, world, dataset=self.train_set
            )
            if hasattr(self.train_batch_sampler, "step_source") and self.trainer is not None:
                trainer = self.trainer  # a step's batch follows the trainer's step counter
                self.train_batch_sampler.step_source = lambda: trainer.global_step
        if self._restored_sampler is not None:
            self.train_batch_sampler.load_state_dict(self._restored_sampler)
            self._restored_sampler = None
        return DataLoader(
            self.train_set, batch_sampler=self.train_batch_sampler, collate_fn=_identity_collate
        )

    def state_dict(self) -> dict:
        """The training sampler's generator, saved in checkpoints: a resumed run draws the
        batches the uninterrupted run would have drawn."""
        if self.train_batch_sampler is None:
            return {}
        return {"train_batch_sampler": self.train_batch_sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._restored_sampler = state.get("train_batch_sampler")

    def _eval_loader(self, dataset: TensorSet) -> DataLoader:
        batches = BatchSampler(SequentialSampler(dataset), self.eval_batch_size, drop_last=False)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=_identity_collate)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches: K views of each row (privacy.augmentations), then augmented."""
        if self.trainer is None or not self.trainer.training:
            return batch
        if self.views > 1:
            batch = with_views(batch, self.views)
        if not self.augment:
            return batch
        if isinstance(batch, UnitBatch):
            (x, y) = batch.batch
            return replace(batch, batch=(self.augmentation(x), y))
        x, y = batch
        return self.augmentation(x), y
