"""Correlated noise (issue 20): the Toeplitz algebra and optimised strategies against
jax-privacy (committed reference values, tests/fixtures/make_jax_privacy_reference.py), the
sensitivity against a brute force over participation patterns, the noise's covariance across
steps against the strategy's, and the cyclic Poisson sampler against its distribution."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dpresearch.data.base import TensorSet
from dpresearch.data.samplers import (
    CyclicPoissonSampling,
    RandomSource,
    example_groups,
    new_secret_key,
)
from dpresearch.privacy.mechanisms import BandedMF, IndependentNoise, toeplitz
from dpresearch.privacy.mechanisms.strategies import banded_toeplitz, blt, blt_coefficients
from dpresearch.privacy.mechanisms.streams import BandedStream, BLTStream, IndependentStream
from dpresearch.privacy.spec import PrivacyConfigError

REFERENCE = json.loads(
    (Path(__file__).parent / "fixtures" / "jax_privacy_reference.json").read_text()
)


# --- strategies and algebra against jax-privacy ----------------------------------------------
@pytest.mark.parametrize(
    "case", REFERENCE["banded"], ids=lambda c: f"n{c['n']}-b{c['bands']}-{c['reduction']}"
)
def test_banded_strategy_is_as_good_as_jax_privacys(case) -> None:
    n, bands, reduction = case["n"], case["bands"], case["reduction"]
    theirs = torch.tensor(case["coefficients"], dtype=torch.float64)
    # Our loss is theirs (same objective, same conventions) ...
    assert toeplitz.loss(theirs, n, reduction).item() == pytest.approx(case["loss"], rel=1e-9)
    # ... and our optimiser reaches it: unit norm, non-negative, non-increasing.
    ours = banded_toeplitz(n, bands, reduction)
    assert toeplitz.loss(ours, n, reduction).item() <= case["loss"] * (1 + 1e-6)
    assert ours.norm().item() == pytest.approx(1.0, abs=1e-12)
    assert (ours >= 0).all() and (ours[1:] <= ours[:-1]).all()


@pytest.mark.parametrize(
    "case",
    REFERENCE["blt"],
    ids=lambda c: f"n{c['n']}-sep{c['min_sep']}-d{c['buffers']}-{c['error']}",
)
def test_blt_strategy_is_as_good_as_jax_privacys(case) -> None:
    """BLT under (k, b) participation: our loss of jax-privacy's BLT is theirs, and our
    optimiser's BLT is at least as good; its coefficients are positive and non-increasing
    (where the sensitivity formula is exact)."""
    n, sep, cap, d, error = (case[k] for k in ("n", "min_sep", "max_participations", "buffers",
                                               "error"))  # fmt: skip
    decay, scale = (
        torch.tensor(case[k], dtype=torch.float64) for k in ("buf_decay", "output_scale")
    )
    theirs = blt_coefficients(decay, scale, n)
    assert torch.allclose(theirs, torch.tensor(case["coefficients"], dtype=torch.float64))
    assert toeplitz.loss(theirs, n, error, sep, cap).item() == pytest.approx(case["loss"], rel=1e-9)
    decay, scale = blt(n, d, sep, cap, error)
    ours = blt_coefficients(decay, scale, n)
    assert toeplitz.loss(ours, n, error, sep, cap).item() <= case["loss"] * (1 + 1e-6)
    assert (ours > 0).all() and (ours[1:] <= ours[:-1]).all()


def test_toeplitz_algebra_matches_jax_privacy() -> None:
    ref = REFERENCE["algebra"]
    coef, n = torch.tensor(ref["coefficients"], dtype=torch.float64), ref["n"]
    assert torch.allclose(
        toeplitz.inverse(coef, n), torch.tensor(ref["inverse"], dtype=torch.float64)
    )
    assert torch.allclose(toeplitz.per_query_error(coef, n),
                          torch.tensor(ref["per_query_error"], dtype=torch.float64))  # fmt: skip
    # The inverse really inverts, and the error is B's row norms (materialised).
    a_inv = toeplitz.materialize(toeplitz.inverse(coef, n), n)
    assert torch.allclose(toeplitz.materialize(coef, n) @ a_inv, torch.eye(n, dtype=torch.float64))
    decoder = torch.tril(torch.ones(n, n, dtype=torch.float64)) @ a_inv
    assert torch.allclose((decoder**2).sum(1), toeplitz.per_query_error(coef, n))
    sens = torch.tensor(ref["sensitivity_coefficients"], dtype=torch.float64)
    for key, value in ref["minsep_sensitivity_squared"].items():
        sep, cap = key.split(",")
        cap = None if cap == "None" else int(cap)
        got = toeplitz.minsep_sensitivity_squared(sens, n, int(sep), cap).item()
        assert got == pytest.approx(value, rel=1e-12), key


def brute_force_sensitivity_squared(coef, n: int, min_sep: int, cap: int | None) -> float:
    """max ||C u||^2 over every participation pattern u: at most ``cap`` steps of n, any two
    at least ``min_sep`` apart (one example's clipped gradient moves each by at most 1, in
    the same direction: the worst case for non-negative C; for C with negative entries the
    sign pattern matters, so every sign is tried too)."""
    c = toeplitz.materialize(coef, n)
    k = toeplitz.max_participations(n, min_sep, cap)
    best = 0.0
    for size in range(1, k + 1):
        for steps in itertools.combinations(range(n), size):
            if any(b - a < min_sep for a, b in zip(steps, steps[1:])):
                continue
            for signs in itertools.product((1.0, -1.0), repeat=size - 1):
                u = torch.zeros(n, dtype=torch.float64)
                u[list(steps)] = torch.tensor((1.0, *signs), dtype=torch.float64)
                best = max(best, float((c @ u).pow(2).sum()))
    return best


@pytest.mark.parametrize(
    "coef",
    [[1.0, 0.7, 0.5, 0.45, 0.2, 0.1], [1.0, 0.6, 0.5, 0.1, 0.3, -0.2], [0.8, 0.45, 0.33, 0.26]],
    ids=["decreasing", "neither", "bandmf"],
)
@pytest.mark.parametrize("sep,cap", [(1, 1), (1, 3), (2, None), (3, 2), (4, None)])
def test_sensitivity_is_the_brute_force_maximum_or_above_it(coef, sep, cap) -> None:
    n = 9
    coef = torch.tensor(coef, dtype=torch.float64)
    formula = toeplitz.minsep_sensitivity_squared(coef, n, sep, cap).item()
    brute = brute_force_sensitivity_squared(coef, n, sep, cap)
    monotone = bool((coef >= 0).all() and (coef[1:] <= coef[:-1]).all())
    if monotone:
        assert formula == pytest.approx(brute, rel=1e-12)  # exact
    else:
        assert formula >= brute - 1e-12  # an upper bound: never under-reports


def test_bands_no_wider_than_the_separation_make_participations_disjoint() -> None:
    """BandMF's accounting (Thm. 4 of the amplified BandMF paper): with b bands and steps at
    least b apart, k participations cost k times one column's squared norm, at most 1."""
    n, bands = 40, 5
    coef = banded_toeplitz(n, bands)
    for k in (1, 2, 4, 8):
        assert toeplitz.minsep_sensitivity_squared(coef, n, bands, k).item() == pytest.approx(k)


# --- the noise streams --------------------------------------------------------------------------
def draw(stream, steps: int, size: int, std: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([stream.noised([torch.zeros(size)], std, gen)[0] for _ in range(steps)])


def test_banded_noise_has_the_strategys_covariance_across_steps() -> None:
    """x = C^{-1} z: Cov(x_s, x_t) = std^2 (C^{-1} C^{-T})_{st}. 200,000 coordinates of one
    parameter are 200,000 independent draws of the whole sequence."""
    steps, std, coef = 7, 1.5, banded_toeplitz(7, 3)
    x = draw(BandedStream(coef), steps, 200_000, std).double()
    empirical = x @ x.T / x.shape[1]
    c_inv = torch.linalg.inv(toeplitz.materialize(coef, steps))
    expected = std**2 * c_inv @ c_inv.T
    # each entry's standard error is at most about std^2 sqrt(2 / draws) * scale
    scale = expected.diag().max().item()
    assert torch.allclose(empirical, expected, atol=6 * scale * math.sqrt(2 / x.shape[1]))
    assert not torch.allclose(expected, torch.diag(expected.diag()), atol=0.05)  # correlated


def test_blt_noise_has_the_strategys_covariance_across_steps() -> None:
    steps, std = 9, 0.8
    decay, scale = blt(30, 2, 5, None)
    x = draw(BLTStream(decay, scale), steps, 200_000, std).double()
    empirical = x @ x.T / x.shape[1]
    c_inv = torch.linalg.inv(toeplitz.materialize(blt_coefficients(decay, scale, steps), steps))
    expected = std**2 * c_inv @ c_inv.T
    scale_ = expected.diag().max().item()
    assert torch.allclose(empirical, expected, atol=6 * scale_ * math.sqrt(2 / x.shape[1]))
    assert not torch.allclose(expected, torch.diag(expected.diag()), atol=0.05)  # correlated


def test_a_resumed_blt_stream_continues_bit_for_bit() -> None:
    decay, scale = blt(20, 3, 4, None)
    sums = [torch.zeros(4, 2), torch.zeros(3)]
    gen = torch.Generator().manual_seed(2)
    whole = BLTStream(decay, scale)
    expected = [whole.noised(sums, 1.0, gen) for _ in range(7)]
    gen = torch.Generator().manual_seed(2)
    first = BLTStream(decay, scale)
    got = [first.noised(sums, 1.0, gen) for _ in range(3)]
    state, gen_state = first.state_dict(), gen.get_state()
    resumed = BLTStream(*blt(50, 3, 4, None))  # planned otherwise: keeps the checkpoint's
    resumed.load_state_dict(state)
    gen = torch.Generator().set_state(gen_state)
    got += [resumed.noised(sums, 1.0, gen) for _ in range(4)]
    for a, b in zip(expected, got):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    with pytest.raises(ValueError, match="noise.buffers=3"):
        BLTStream(*blt(20, 2, 4, None)).load_state_dict(state)


def test_one_band_is_independent_noise_bit_for_bit() -> None:
    independent = draw(IndependentStream(), 5, 1000, 0.7, seed=3)
    banded = draw(BandedStream(torch.ones(1, dtype=torch.float64)), 5, 1000, 0.7, seed=3)
    assert torch.equal(independent, banded)
    assert banded_toeplitz(50, 1).tolist() == [1.0]


def test_a_resumed_stream_continues_the_noise_bit_for_bit() -> None:
    coef = banded_toeplitz(12, 4)
    gen = torch.Generator().manual_seed(1)
    whole = BandedStream(coef)
    sums = [torch.zeros(3, 4), torch.zeros(5)]
    expected = [whole.noised(sums, 2.0, gen) for _ in range(9)]
    gen = torch.Generator().manual_seed(1)
    first = BandedStream(coef)
    got = [first.noised(sums, 2.0, gen) for _ in range(5)]
    state, gen_state = first.state_dict(), gen.get_state()
    resumed = BandedStream(coef)
    resumed.load_state_dict(state)
    gen = torch.Generator().set_state(gen_state)
    got += [resumed.noised(sums, 2.0, gen) for _ in range(4)]
    for a, b in zip(expected, got):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len(state["history"]) == 3  # bands - 1 steps of every parameter
    with pytest.raises(ValueError, match="resume with noise.bands=4"):
        BandedStream(banded_toeplitz(12, 3)).load_state_dict(state)
    longer = BandedStream(banded_toeplitz(40, 4))  # planned for more steps: keeps the ckpt's
    longer.load_state_dict(state)
    assert longer.coefficients == [float(c) for c in coef]


def test_banded_mf_refuses_samplers_its_accountant_does_not_cover() -> None:
    from dpresearch.data.samplers import PoissonSampling, ShuffleSampling

    mech = BandedMF(bands=4)
    for sampling in (PoissonSampling(), ShuffleSampling(), CyclicPoissonSampling(groups=3)):
        with pytest.raises(PrivacyConfigError, match="sampler=cyclic_poisson sampler.groups=4"):
            mech.check_sampler(sampling)
    mech.check_sampler(CyclicPoissonSampling(groups=4))
    mech.check_sampler(CyclicPoissonSampling(groups=6))  # farther apart is fine
    IndependentNoise().check_sampler(CyclicPoissonSampling(groups=4))
    with pytest.raises(PrivacyConfigError, match="noise.bands"):
        BandedMF(bands=0)


# --- the cyclic Poisson sampler -----------------------------------------------------------------
def dataset(n: int) -> TensorSet:
    return TensorSet(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n) % 10)


def test_cyclic_poisson_draws_each_group_on_its_own_steps_at_rate_b_e_over_n() -> None:
    n, groups, expected, steps = 600, 4, 30, 4000
    spec = CyclicPoissonSampling(expected_batch_size=expected, groups=groups)
    sampler = spec.build(n, seed=2, dataset=dataset(n))
    p = groups * expected / n
    assert sampler.sample_rate == p == spec.sample_rate(n)
    member = torch.zeros(groups, n, dtype=torch.bool)
    for g, m in enumerate(sampler.members):
        member[g, m] = True
    assert (member.sum(0) == 1).all()  # a partition
    counts = np.zeros(n)
    for t in range(steps):
        batch = sampler.batch_at(t)
        assert member[t % groups, batch].all()  # only the step's group
        counts[batch] += 1
    own = steps / groups  # each example's group comes up this often
    rates = counts / own
    assert np.all(np.abs(rates - p) < 5 * np.sqrt(p * (1 - p) / own))
    assert spec.participations(10) == 3 and spec.participations(12) == 3


def test_cyclic_groups_follow_each_examples_content_not_its_position() -> None:
    """Add/remove neighbours: dropping one example moves no other example's group."""
    data = dataset(300)
    random = RandomSource(5)
    full = example_groups(data, 5, random)
    fewer = TensorSet(torch.cat([data.x[:17], data.x[18:]]), torch.cat([data.y[:17], data.y[18:]]))
    dropped = example_groups(fewer, 5, random)
    assert torch.equal(torch.cat([full[:17], full[18:]]), dropped)
    sizes = torch.bincount(full, minlength=5)
    assert sizes.min() > 30  # roughly balanced (300 / 5 each, binomial)


def test_a_steps_batch_depends_on_the_step_alone() -> None:
    """Prefetched, skipped or resumed: batch t is the same."""
    n = 200
    spec = CyclicPoissonSampling(expected_batch_size=10, groups=2)
    a = spec.build(n, seed=0, dataset=dataset(n))
    b = spec.build(n, seed=0, dataset=dataset(n))
    first_epoch = list(a)
    assert [b.batch_at(t) for t in reversed(range(len(first_epoch)))][::-1] == first_epoch
    b.step_source = lambda: 7  # a resume at step 7 starts its pass there
    assert next(iter(b)) == a.batch_at(7)
    secure = [spec.build(n, seed=new_secret_key(), dataset=dataset(n)) for _ in range(2)]
    assert secure[0].batch_at(0) != secure[1].batch_at(0)  # secret draws ...
    # ... from a partition that a resumed secure run (a fresh key) keeps
    assert all(torch.equal(a, b) for a, b in zip(secure[0].members, secure[1].members))


def test_cyclic_ranks_share_one_batch() -> None:
    n, key = 300, new_secret_key()
    spec = CyclicPoissonSampling(expected_batch_size=20, groups=3)
    whole = spec.build(n, seed=key, dataset=dataset(n))
    shards = [spec.build(n, seed=key, rank=r, world_size=2, dataset=dataset(n)) for r in (0, 1)]
    for t in range(6):
        joined = sorted(shards[0].batch_at(t) + shards[1].batch_at(t))
        assert joined == sorted(whole.batch_at(t))


def test_too_many_groups_for_the_batch_is_refused_with_the_limit() -> None:
    with pytest.raises(ValueError, match="at most 10"):
        CyclicPoissonSampling(expected_batch_size=10, groups=20).sample_rate(100)
