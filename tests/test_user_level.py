"""User-level DP (privacy.unit=user): users Poisson-sampled against their distribution, each
contributing at most examples_per_user of their own examples as one unit; the accountant
counts users; refusals by name; runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dpresearch.data.base import TensorSet, synthetic_users
from dpresearch.data.padding import PAD_INDEX, PAD_LABEL
from dpresearch.data.samplers import MaskedPoissonSampling, PoissonSampling, ShuffleSampling
from dpresearch.data.users import user_sampling
from dpresearch.privacy.accounting import compute_epsilon
from dpresearch.privacy.units import UnitBatch

ROOT = Path(__file__).resolve().parents[1]


def dataset(users: torch.Tensor) -> TensorSet:
    data = TensorSet(torch.arange(len(users)).float().unsqueeze(1), torch.zeros(len(users)).long())
    data.users = users
    return data


def draws(sampler, steps: int) -> list:
    out = []
    while len(out) < steps:
        out += list(sampler)
    return out[:steps]


def test_users_are_poisson_sampled_and_bounded() -> None:
    """Each user joins each step with probability q = E / U, independently (the number of
    users per step Binomial(U, q)); a sampled user brings min(m, n_u) of their own examples,
    adjacent, one unit; the choice of examples changes between steps."""
    users = synthetic_users(3000, 100, 1.0, seed=0)  # skewed: some users hold many examples
    data, m, q, steps = dataset(users), 3, 0.1, 3000
    sampler = user_sampling(PoissonSampling(expected_batch_size=10), m).build(
        len(users), 4, dataset=data
    )
    counts = torch.bincount(users, minlength=100)
    seen = np.zeros((steps, 100), dtype=bool)
    choices: dict[int, set] = {}
    for t, rows in enumerate(draws(sampler, steps)):
        batch = data.__getitems__(rows)
        assert isinstance(batch, UnitBatch)
        units = batch.units()
        owners = users[torch.as_tensor(rows)]
        for u in range(units.count):
            mine = owners[units.index == u]
            assert len(set(mine.tolist())) == 1  # a unit is one user's examples
            user = int(mine[0])
            assert not seen[t, user]  # at most once a step
            seen[t, user] = True
            assert len(mine) == min(m, int(counts[user]))
            picked = tuple(np.asarray(rows)[(units.index == u).numpy()].tolist())
            choices.setdefault(user, set()).add(picked)
    sizes = seen.sum(1)
    mean, var = 100 * q, 100 * q * (1 - q)
    assert abs(sizes.mean() - mean) < 4 * np.sqrt(var / steps)
    assert abs(sizes.var(ddof=1) - var) < 4 * var * np.sqrt(2 / steps)
    rates = seen.mean(0)
    assert np.all(np.abs(rates - q) < 5 * np.sqrt(q * (1 - q) / steps))
    heavy = int(counts.argmax())
    assert counts[heavy] > m and len(choices[heavy]) > 10  # a fresh choice each step


def test_ranks_split_the_users_of_one_global_batch() -> None:
    users = synthetic_users(500, 40, 0.0, seed=1)
    data, sampling = dataset(users), user_sampling(PoissonSampling(expected_batch_size=8), 4)
    one = draws(sampling.build(500, 7, dataset=data), 20)
    ranks = [draws(sampling.build(500, 7, rank=r, world_size=2, dataset=data), 20) for r in (0, 1)]
    for t in range(20):
        by_rank = [set(ranks[r][t]) for r in (0, 1)]
        assert by_rank[0] | by_rank[1] == set(one[t]) and not by_rank[0] & by_rank[1]
        owners = [{int(users[i]) for i in ranks[r][t]} for r in (0, 1)]
        assert owners[0].isdisjoint(owners[1])  # each user whole on one rank


def test_masked_user_batches_have_static_units_and_shapes() -> None:
    users = synthetic_users(400, 30, 1.0, seed=2)
    data = dataset(users)
    sampling = MaskedPoissonSampling(expected_batch_size=6, max_physical_batch_size=10)
    sampler = user_sampling(sampling, 3).build(400, 0, dataset=data)
    for rows in draws(sampler, 30):
        batch = data.__getitems__(rows)
        units = batch.units()
        assert units.sizes().tolist() == [3] * units.count  # every unit m rows
        assert len(rows) % 9 == 0  # whole physical batches of 3 users x 3 rows
        pad = torch.as_tensor(rows) == PAD_INDEX
        assert (batch.batch[1][pad] == PAD_LABEL).all()


def test_a_resumed_user_sampler_draws_what_the_uninterrupted_one_does() -> None:
    users = synthetic_users(300, 25, 0.5, seed=3)
    data, sampling = dataset(users), user_sampling(PoissonSampling(expected_batch_size=5), 2)
    straight = sampling.build(300, 11, dataset=data)
    full = draws(straight, 12)
    first = sampling.build(300, 11, dataset=data)
    it = iter(first)
    head = [next(it) for _ in range(5)]
    state = first.state_dict()
    resumed = sampling.build(300, 11, dataset=data)
    resumed.load_state_dict(state)
    tail = draws(resumed, 7)
    assert [list(r) for r in head + tail] == [list(r) for r in full]
    assert [r.unit_ids for r in head + tail] == [r.unit_ids for r in full]


def test_user_level_refusals_name_the_key() -> None:
    with pytest.raises(ValueError, match="poisson_masked"):
        from dpresearch.data.samplers import CyclicPoissonSampling

        user_sampling(CyclicPoissonSampling(groups=2), 2)
    with pytest.raises(ValueError, match="privacy.examples_per_user=300"):
        user_sampling(PoissonSampling(max_physical_batch_size=256), 300)
    with pytest.raises(ValueError, match="dataset.users"):
        no_users = TensorSet(torch.zeros(10, 1), torch.zeros(10).long())
        user_sampling(ShuffleSampling(), 2).build(10, 0, dataset=no_users)


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "run.py", "+experiment=digits_dp", "logger=none",
           "extras.print_config=false", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={tmp_path}", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**__import__("os").environ, "WANDB_MODE": "disabled"})  # fmt: skip


def test_a_user_level_run_accounts_users(tmp_path) -> None:
    done = run(tmp_path, "privacy.unit=user", "dataset.users=150", "dataset.user_skew=1.0",
               "privacy.examples_per_user=4", "sampler.expected_batch_size=30",
               "trainer.max_epochs=2")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["privacy_unit"] == "user" and s["examples_per_user"] == 4
    users = s["num_users"]
    assert 100 < users <= 150 and s["num_train"] > users
    assert s["sample_rate"] == pytest.approx(30 / users)  # users, not examples, are sampled
    assert s["steps"] == 2 * round(users / 30)
    want = compute_epsilon(30 / users, s["noise_multiplier"], s["steps"], 1e-5, "prv")
    assert s["epsilon"] == pytest.approx(want.epsilon, rel=1e-6)
    assert s["self_check"]["passed"]
    statement = (tmp_path / "privacy_statement.md").read_text()
    assert "DP for each user (user-level" in statement and "add/remove one user" in statement


def test_user_level_without_users_is_refused_by_name(tmp_path) -> None:
    done = run(tmp_path, "privacy.unit=user", "trainer.max_epochs=1")
    assert done.returncode != 0 and "dataset.users=<count>" in done.stderr
    done = run(tmp_path / "b", "privacy.unit=users")
    assert done.returncode != 0 and "privacy.unit='users'" in done.stderr


def test_a_user_level_run_resumes_bit_for_bit(compose_cfg, tmp_path) -> None:
    from dpresearch.train import run as train
    from tests.test_resume import assert_same_training, last_checkpoint

    args = ["logger=csv", "extras.print_config=false", "trainer.enable_progress_bar=false",
            "privacy.unit=user", "dataset.users=300", "dataset.user_skew=1.0",
            "sampler.expected_batch_size=40", "privacy.target_epsilon=null",
            "privacy.noise_multiplier=1.2", "sampler=poisson_masked",
            "sampler.max_physical_batch_size=64"]  # fmt: skip
    whole = train(compose_cfg([*args, "trainer.max_epochs=4"]), tmp_path / "whole")
    train(compose_cfg([*args, "trainer.max_epochs=2"]), tmp_path / "split")
    resumed = train(compose_cfg([*args, "trainer.max_epochs=4", "run.resume=true"]),
                    tmp_path / "split")  # fmt: skip
    assert resumed["epsilon"] == whole["epsilon"] and resumed["steps"] == whole["steps"]
    assert_same_training(last_checkpoint(tmp_path / "whole"), last_checkpoint(tmp_path / "split"))


def test_reports_name_the_unit_and_the_views() -> None:
    """Comparisons never pool user-level with example-level runs: the method says so."""
    from dpresearch.tracking.summary import method_label, run_tags

    base = {"private": True, "clipping": "fixed", "engine": "bk", "finetune": "full"}
    assert method_label(base) == "fixed/bk/full"
    user = {**base, "privacy_unit": "user", "augmentations": 8}
    assert method_label(user) == "fixed/bk/full/8views/user-level"
    tags, extra = run_tags(user, "train")
    assert extra["labels"]["unit"] == "user" and "method=fixed/bk/full/8views/user-level" in tags


def test_user_settings_without_user_level_are_refused(compose_cfg, tmp_path) -> None:
    """Nothing is silently ignored: users or a per-user bound under privacy.unit=example."""
    from dpresearch.privacy.spec import DPSpec, PrivacyConfigError
    from dpresearch.train import run as train

    with pytest.raises(ValueError, match="dataset.users=50 gives each example a user"):
        train(compose_cfg(["logger=none", "dataset.users=50"]), tmp_path)
    with pytest.raises(PrivacyConfigError, match="privacy.examples_per_user=4"):
        DPSpec(examples_per_user=4)
    assert DPSpec(unit="user").examples_per_user == 8


def test_a_sampler_refuses_the_other_units_state() -> None:
    users = synthetic_users(100, 10, 0.0, seed=0)
    by_user = user_sampling(PoissonSampling(expected_batch_size=4), 2).build(
        100, 0, dataset=dataset(users)
    )
    by_example = PoissonSampling(expected_batch_size=4).build(100, 0)
    with pytest.raises(ValueError, match="resume with privacy.unit=user"):
        by_example.load_state_dict(by_user.state_dict())
    with pytest.raises(ValueError, match="resume with privacy.unit=example"):
        by_user.load_state_dict(by_example.state_dict())
