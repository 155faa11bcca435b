"""Samplers against their distribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from dpresearch.data.base import TensorSet
from dpresearch.data.padding import PAD_INDEX, PAD_LABEL, count_real
from dpresearch.data.samplers import (
    MaskedPoissonSampling,
    PoissonSampling,
    ShuffleSampling,
    new_secret_key,
)


def inclusions(sampler, steps: int, n: int) -> np.ndarray:
    """(steps, n) booleans: which examples each of the first ``steps`` batches holds."""
    incl = np.zeros((steps, n), dtype=bool)
    t = 0
    while t < steps:
        for batch in sampler:
            if t == steps:
                break
            incl[t, batch] = True
            t += 1
    return incl


def lag_pvalue(incl: np.ndarray) -> float:
    """Chi-square p-value of example 0's inclusion in one step against the next."""
    a, b = incl[:-1, 0], incl[1:, 0]
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    return stats.chi2_contingency(table)[1]


def test_poisson_batch_sizes_have_binomial_mean_and_variance() -> None:
    n, q, steps = 2000, 0.05, 4000
    sampler = PoissonSampling(expected_batch_size=100).build(n, seed=3)
    sizes = []
    while len(sizes) < steps:
        sizes += [len(b) for b in sampler]
    sizes = np.array(sizes[:steps])
    mean, var = n * q, n * q * (1 - q)
    # Standard errors: mean var/steps; variance ~ sqrt(2/steps) relative.
    assert abs(sizes.mean() - mean) < 4 * np.sqrt(var / steps)
    assert abs(sizes.var(ddof=1) - var) < 4 * var * np.sqrt(2 / steps)
    assert len(set(sizes.tolist())) > 10  # sizes vary: not fixed batches


def test_poisson_inclusions_are_independent_and_at_rate_q() -> None:
    n, q, steps = 50, 0.2, 6000
    incl = inclusions(PoissonSampling(expected_batch_size=10).build(n, seed=5), steps, n)
    # Each example's inclusion rate is q.
    rates = incl.mean(0)
    assert np.all(np.abs(rates - q) < 5 * np.sqrt(q * (1 - q) / steps))
    # Pairwise independence: 2x2 contingency chi-square for several pairs.
    pvalues = []
    for a, b in [(0, 1), (2, 7), (10, 49), (20, 21), (33, 34)]:
        table = np.array(
            [[np.sum(incl[:, a] & incl[:, b]), np.sum(incl[:, a] & ~incl[:, b])],
             [np.sum(~incl[:, a] & incl[:, b]), np.sum(~incl[:, a] & ~incl[:, b])]]
        )  # fmt: skip
        pvalues.append(stats.chi2_contingency(table)[1])
    assert min(pvalues) > 0.001
    # Across steps, one example's inclusions are independent too (lag-1 contingency).
    assert lag_pvalue(incl) > 0.001


def test_poisson_steps_per_epoch_is_n_over_expected_batch() -> None:
    spec = PoissonSampling(expected_batch_size=64)
    assert spec.steps_per_epoch(1294) == round(1294 / 64)
    assert len(list(spec.build(1294, 0))) == round(1294 / 64)
    assert spec.sample_rate(1294) == pytest.approx(64 / 1294)


def test_poisson_is_reproducible_from_its_seed() -> None:
    a = list(PoissonSampling(expected_batch_size=10).build(100, seed=1))
    b = list(PoissonSampling(expected_batch_size=10).build(100, seed=1))
    c = list(PoissonSampling(expected_batch_size=10).build(100, seed=2))
    assert a == b and a != c


def test_shuffle_gives_fixed_size_batches_covering_each_example_once() -> None:
    batches = list(ShuffleSampling(expected_batch_size=10).build(105, seed=0))
    assert all(len(b) == 10 for b in batches) and len(batches) == 10
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat)


def test_expected_batch_larger_than_dataset_is_refused() -> None:
    with pytest.raises(ValueError, match="expected_batch_size"):
        PoissonSampling(expected_batch_size=500).build(100, seed=0)


def test_masked_poisson_pads_the_same_poisson_batches_to_static_physical_batches() -> None:
    plain = PoissonSampling(expected_batch_size=30, max_physical_batch_size=16).build(300, 9)
    masked = MaskedPoissonSampling(expected_batch_size=30, max_physical_batch_size=16).build(300, 9)
    for a, b in zip(plain, masked):
        assert b[: len(a)] == a  # the real examples are exactly the Poisson draw
        assert set(b[len(a) :]) <= {PAD_INDEX}
        assert len(b) % 16 == 0 and len(b) - len(a) < 16 and len(b) >= 16


def test_padding_examples_are_zero_with_ignored_labels_and_not_counted() -> None:
    data = TensorSet(torch.arange(1, 13, dtype=torch.float).view(4, 3), torch.tensor([1, 2, 3, 4]))
    x, y = data.__getitems__([2, PAD_INDEX, 0, PAD_INDEX])
    assert y.tolist() == [3, PAD_LABEL, 1, PAD_LABEL]
    assert x[1].abs().sum() == 0 and x[3].abs().sum() == 0 and x[0].tolist() == [7, 8, 9]
    assert count_real((x, y)) == 2


# --- privacy.randomness=secure: batches from a secret key, not the published seed ---------


def test_secure_poisson_has_the_poisson_distribution() -> None:
    n, q, steps = 400, 0.05, 4000
    sampler = PoissonSampling(expected_batch_size=20).build(n, seed=new_secret_key())
    incl = inclusions(sampler, steps, n)
    sizes = incl.sum(1)
    mean, var = n * q, n * q * (1 - q)
    assert abs(sizes.mean() - mean) < 4 * np.sqrt(var / steps)
    assert abs(sizes.var(ddof=1) - var) < 4 * var * np.sqrt(2 / steps)
    rates = incl.mean(0)
    assert np.all(np.abs(rates - q) < 5 * np.sqrt(q * (1 - q) / steps))
    assert lag_pvalue(incl) > 0.001


def test_secure_batches_do_not_follow_the_seed_and_are_shared_by_ranks() -> None:
    sampling = PoissonSampling(expected_batch_size=50)
    seeded = [list(sampling.build(1000, seed=0)) for _ in range(2)]
    assert seeded[0] == seeded[1]  # research mode: the seed reproduces every batch
    a, b = (list(sampling.build(1000, seed=new_secret_key())) for _ in range(2))
    assert a != b  # two secret keys: unrelated batches
    key = new_secret_key()
    whole = list(sampling.build(1000, seed=key))
    shards = [list(sampling.build(1000, seed=key, rank=r, world_size=2)) for r in (0, 1)]
    for step, batch in enumerate(whole):  # the ranks' shares partition the one-key batch
        assert sorted(shards[0][step] + shards[1][step]) == batch


def test_secure_sampler_state_holds_no_key_and_refuses_to_feed_a_seeded_one() -> None:
    key = new_secret_key()
    sampler = PoissonSampling(expected_batch_size=50).build(1000, seed=key)
    state = sampler.state_dict()
    assert state == {"secure": True} and key not in repr(state).encode()
    seeded = PoissonSampling(expected_batch_size=50).build(1000, seed=0)
    with pytest.raises(ValueError, match="randomness=secure"):
        seeded.load_state_dict(state)
    shuffled = list(ShuffleSampling(expected_batch_size=10).build(100, seed=key))
    assert sorted(i for b in shuffled for i in b) == list(range(100))  # a permutation


def test_the_secret_key_is_drawn_once_and_broadcast_from_rank_0() -> None:
    """Under DDP every rank must draw the same global mask: the key comes from rank 0."""
    from types import SimpleNamespace

    from dpresearch.data.base import ClassificationDataModule

    sent = []

    def broadcast(obj, src=0):
        sent.append((obj, src))
        return b"k" * 32  # what rank 0 drew

    dm = ClassificationDataModule()
    dm.attach_sampler(PoissonSampling(expected_batch_size=4), seed=None)
    dm.trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(broadcast=broadcast))
    assert dm._sampler_source() == b"k" * 32 and sent[0][1] == 0
    assert len(sent[0][0]) == 32 and sent[0][0] != b"k" * 32  # this rank's own draw, replaced
    dm.attach_sampler(PoissonSampling(expected_batch_size=4), seed=7)
    assert dm._sampler_source() == 7  # seeded: the seed itself
