"""User-level sampling (``privacy.unit=user``): users, not examples, are drawn.

The configured sampler (Poisson, masked Poisson, shuffle) runs over the U users exactly as it
runs over examples at example level: each user joins each step independently with
probability q = sampler.expected_batch_size / U (the expected USERS per step), under data
parallelism every rank takes every world_size-th sampled user. A sampled user contributes up
to ``examples_per_user`` of their examples, chosen at random (a fresh choice each step), as
adjacent rows that the strategy clips as one unit (``dpresearch.privacy.units``). The
neighbouring datasets of the guarantee differ in one user's examples, all of them.

The batch is a list of example indices whose ``unit_ids`` attribute names each row's user
(``TensorSet`` turns it into a ``UnitBatch``). A padding user (masked Poisson) fills
``examples_per_user`` padding rows, so every unit has the same number of rows and the
physical batches keep one static shape.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch.utils.data import Dataset

from dpresearch.data.padding import PAD_INDEX
from dpresearch.data.samplers import BatchSampler, RandomSource, Sampling, Source


class UnitIndices(list):
    """A batch's example indices, with ``unit_ids``: each row's privacy unit (its user)."""

    unit_ids: list[int]


class UserBatchSampler:
    """Expands each user that ``users`` (a batch sampler over user indices) draws into up to
    ``per_user`` of the user's examples."""

    def __init__(self, users: BatchSampler, members: list[torch.Tensor], per_user: int,
                 seed: Source, pad_users: bool) -> None:  # fmt: skip
        self.users, self.members, self.per_user = users, members, per_user
        self.rank, self.world_size = users.rank, users.world_size
        self.pad_users = pad_users  # pad every user to per_user rows (static shapes)
        self._key = RandomSource(seed).key("examples of a user")
        self._step = 0  # the choice of examples follows the batch count (saved, resumed)

    def __len__(self) -> int:
        return len(self.users)

    def _choice(self, step: int, user: int) -> torch.Generator:
        """The generator of one user's examples at one step: a function of (step, user)
        alone, so every rank (each holding some of the users) chooses as one process would."""
        message = step.to_bytes(8, "little") + user.to_bytes(8, "little")
        digest = hashlib.blake2b(message, key=self._key, digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)

    def __iter__(self) -> Iterator[UnitIndices]:
        for users in self.users:
            step, self._step = self._step, self._step + 1
            rows, ids = UnitIndices(), []
            for slot, user in enumerate(users):
                if user == PAD_INDEX:
                    chosen = []
                else:
                    own = self.members[user]
                    pick = torch.randperm(len(own), generator=self._choice(step, user))
                    chosen = own[pick[: self.per_user].sort().values].tolist()
                width = self.per_user if self.pad_users else max(len(chosen), 1)
                chosen += [PAD_INDEX] * (width - len(chosen))
                rows += chosen
                ids += [slot] * len(chosen)  # a unit per slot: padding users are units too
            rows.unit_ids = ids
            yield rows

    def state_dict(self) -> dict:
        return {"users": self.users.state_dict(), "step": self._step}

    def load_state_dict(self, state: dict) -> None:
        if "users" not in state:
            raise ValueError(
                "the checkpoint's sampler drew examples, not users: resume with privacy.unit="
                "example, or start a new run"
            )
        self.users.load_state_dict(state["users"])
        self._step = int(state["step"])


@dataclass
class UserSampling:
    """The configured sampler over users (``privacy.unit=user``); it builds the batch sampler
    from the training set's users (``TensorSet.users``)."""

    users: Sampling
    per_user: int

    @property
    def name(self) -> str:
        return self.users.name

    def build(self, num_samples: int, seed: Source, rank: int = 0, world_size: int = 1,
              dataset: Dataset | None = None) -> UserBatchSampler:  # fmt: skip
        ids = getattr(dataset, "users", None)
        if ids is None:
            raise ValueError("privacy.unit=user needs each training example's user: set "
                             "dataset.users=<count> (synthetic users)")  # fmt: skip
        present, index = torch.unique(ids, return_inverse=True)
        members = [torch.nonzero(index == u, as_tuple=True)[0] for u in range(len(present))]
        sampling, pad = self.users, self.users.name == "poisson_masked"
        if pad:  # padded to whole physical batches of users, each user per_user rows
            users_per_batch = max(1, sampling.max_physical_batch_size // self.per_user)
            sampling = replace(sampling, max_physical_batch_size=users_per_batch)
        inner = sampling.build(len(present), seed, rank, world_size)
        return UserBatchSampler(inner, members, self.per_user, seed, pad)


def user_sampling(sampling: Sampling, per_user: int) -> UserSampling:
    """``sampling`` over users; refused where user-level sampling is not built."""
    if sampling.name.startswith("cyclic"):
        raise ValueError(
            f"privacy.unit=user with sampler={sampling.name}: cyclic sampling of users is not "
            "built (its groups hash examples); use sampler=poisson or poisson_masked"
        )
    if per_user > sampling.max_physical_batch_size:
        raise ValueError(
            f"privacy.examples_per_user={per_user} exceeds sampler.max_physical_batch_size="
            f"{sampling.max_physical_batch_size}: a user's rows are clipped together and cannot "
            "be split across physical batches; raise the physical batch or lower the bound"
        )
    return UserSampling(sampling, per_user)
