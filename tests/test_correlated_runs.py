"""Correlated noise in real runs (issue 20): `python run.py noise=banded_mf` works as it is,
records its mechanism, accounts the participations its sampler allows (checked against an
independent accountant, Google's dp-accounting), refuses samplers its accountant does not
cover, trains every batch from the group its step allows, and resumes bit for bit."""

from __future__ import annotations

import math

import dp_accounting
import pytest
import pytorch_lightning as pl
import torch

from dpresearch.data.samplers import CyclicPoissonSampling, RandomSource, example_groups
from dpresearch.privacy import PrivacyConfigError, compute_epsilon
from dpresearch.train import run
from tests.test_resume import assert_same_training, last_checkpoint

FAST = ["logger=csv", "extras.print_config=false", "trainer.enable_progress_bar=false"]
SIGMA = ["privacy.target_epsilon=null", "privacy.noise_multiplier=1.5"]
BANDED = ["noise=banded_mf", "noise.bands=3", "sampler.expected_batch_size=64"]


def pld_epsilon(p: float, sigma: float, participations: int, delta: float) -> float:
    """Google's dp-accounting, PLD: DP-SGD at rate p over the participations."""
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(p, dp_accounting.GaussianDpEvent(sigma)),
        participations,
    )
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    return accountant.compose(event).get_epsilon(delta)


@pytest.mark.parametrize("n,batch,groups,steps,sigma", [
    (1000, 10, 4, 400, 1.0), (60000, 256, 16, 2000, 0.9), (1294, 64, 3, 62, 1.5),
    (5000, 50, 10, 97, 2.0),
])  # fmt: skip
def test_cyclic_accounting_is_dp_sgd_over_participations(n, batch, groups, steps, sigma):
    """Amplified BandMF's Thm. 4: epsilon is DP-SGD's at rate b E / N over ceil(T / b)
    steps, against dp-accounting's PLD (an independent implementation)."""
    spec = CyclicPoissonSampling(expected_batch_size=batch, groups=groups)
    p, k = spec.sample_rate(n), spec.participations(steps)
    assert p == pytest.approx(groups * batch / n) and k == math.ceil(steps / groups)
    ours = compute_epsilon(p, sigma, k, 1e-5).epsilon
    theirs = pld_epsilon(p, sigma, k, 1e-5)
    assert theirs * (1 - 1e-3) <= ours <= theirs * 1.02


def test_banded_mf_runs_as_it_is_and_records_its_mechanism(compose_cfg, tmp_path) -> None:
    s = run(compose_cfg([*FAST, *SIGMA, *BANDED, "trainer.max_epochs=2"]), tmp_path / "run")
    assert s["status"] == "completed" and s["sampler"] == "cyclic_poisson"
    assert s["noise"]["mechanism"] == "banded_mf" and s["noise"]["bands"] == 3
    assert len(s["noise"]["coefficients"]) == 3 and s["noise"]["buffers"] == 2
    assert s["noise"]["state_mb"] == 2 * s["trainable_params"] * 4 / 2**20  # float32 buffers
    assert s["participation_period"] == 3
    assert s["participations"] == math.ceil(s["steps"] / 3)
    expected = compute_epsilon(s["sample_rate"], 1.5, s["participations"], s["delta"])
    assert s["epsilon"] == expected.epsilon
    assert s["sample_rate"] == pytest.approx(3 * 64 / s["num_train"])
    plain = run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=2"]), tmp_path / "plain")
    assert plain["noise"] == {"mechanism": "independent", "buffers": 0, "state_mb": 0.0}
    assert plain["participation_period"] == 1 and plain["participations"] == plain["steps"]


def test_banded_mf_calibrates_to_the_target(compose_cfg, tmp_path) -> None:
    s = run(compose_cfg([*FAST, *BANDED, "trainer.max_epochs=2", "privacy.target_epsilon=2"]),
            tmp_path / "run")  # fmt: skip
    assert 2 * 0.99 <= s["epsilon"] <= 2
    assert s["epsilon"] == compute_epsilon(s["sample_rate"], s["noise_multiplier"],
                                           s["participations"], s["delta"]).epsilon  # fmt: skip


@pytest.mark.parametrize("sampler,match", [
    ("sampler=poisson", "sampler=cyclic_poisson sampler.groups=3"),
    ("sampler=shuffle", "sampler=cyclic_poisson sampler.groups=3"),
    ("sampler.groups=2", "sampler=cyclic_poisson sampler.groups=3"),
])  # fmt: skip
def test_banded_mf_refuses_a_sampler_its_accountant_does_not_cover(sampler, match, compose_cfg,
                                                                   tmp_path):  # fmt: skip
    with pytest.raises(PrivacyConfigError, match=match):
        run(compose_cfg([*FAST, *SIGMA, *BANDED, sampler]), tmp_path / "run")


def test_correlated_noise_needs_a_private_run(compose_cfg, tmp_path) -> None:
    with pytest.raises(PrivacyConfigError, match="privacy=dp"):
        run(compose_cfg([*FAST, *BANDED, "privacy=none"]), tmp_path / "run")


class GroupsSeen(pl.Callback):
    """The groups of each training batch's examples, by the global step that trains on it."""

    def __init__(self, lookup: dict):
        self.lookup, self.seen = lookup, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        x, y = batch
        found = {self.lookup[(row.numpy().tobytes(), int(label))] for row, label in zip(x, y)}
        self.seen.append((trainer.global_step, found))


def group_lookup(cfg, groups: int) -> dict:
    """(model input row, label) -> group, hashed as the run's sampler hashes its examples."""
    from dpresearch.train import build

    datamodule = build(cfg.dataset)
    privacy = build(cfg.privacy)
    datamodule.attach_sampler(build(cfg.sampler), privacy.sampler_seed(cfg.seed))
    datamodule.setup("fit")
    data = datamodule.train_set
    ids = example_groups(data, groups, RandomSource(privacy.sampler_seed(cfg.seed)))
    return {(row.numpy().tobytes(), int(label)): int(g)
            for row, label, g in zip(data.transform(data.x), data.y, ids)}  # fmt: skip


def test_every_batch_comes_from_the_group_its_step_allows(compose_cfg, tmp_path, monkeypatch):
    """Through Lightning (prefetching, epochs cut by limit_train_batches, a resume): step t
    trains only on examples of group t mod b."""
    import dpresearch.train as train

    args = [*FAST, *SIGMA, *BANDED, "++trainer.limit_train_batches=4"]
    lookup = group_lookup(compose_cfg(args), 3)
    probes: list[GroupsSeen] = []
    original = train.build_callbacks

    def with_probe(node):
        callbacks = original(node)
        callbacks["groups_seen"] = GroupsSeen(lookup)
        probes.append(callbacks["groups_seen"])
        return callbacks

    monkeypatch.setattr(train, "build_callbacks", with_probe)
    out = tmp_path / "run"
    first = run(compose_cfg([*args, "trainer.max_epochs=2"]), out)
    resumed = run(compose_cfg([*args, "trainer.max_epochs=3", "run.resume=true"]), out)
    # The resumed run (12 planned steps) kept the strategy its checkpoint planned for 8.
    assert resumed["noise"]["coefficients"] == first["noise"]["coefficients"]
    seen = [pair for probe in probes for pair in probe.seen]
    for step, found in seen:
        assert found <= {step % 3}, (step, found)
    # 4 steps an epoch with 3 groups: epochs start at steps 0, 4 and 8 (groups 0, 1, 2)
    assert [step for step, _ in seen] == list(range(12))


def test_banded_mf_resumes_bit_for_bit(compose_cfg, tmp_path) -> None:
    """One strategy for the whole run (noise.horizon: the uninterrupted run's steps), so the
    split run adds the same correlated noise."""
    args = [*FAST, *SIGMA, *BANDED, "noise.horizon=80"]
    whole = run(compose_cfg([*args, "trainer.max_epochs=4"]), tmp_path / "whole")
    run(compose_cfg([*args, "trainer.max_epochs=2"]), tmp_path / "split")
    resumed = run(compose_cfg([*args, "trainer.max_epochs=4", "run.resume=true"]),
                  tmp_path / "split")  # fmt: skip
    assert resumed["epsilon"] == whole["epsilon"] and resumed["steps"] == whole["steps"]
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    a, b = last_checkpoint(tmp_path / "whole"), last_checkpoint(tmp_path / "split")
    assert_same_training(a, b)
    history_a = a["dp_state"]["noise_state"]["history"]
    history_b = b["dp_state"]["noise_state"]["history"]
    assert len(history_a) == 2
    for step_a, step_b in zip(history_a, history_b):
        assert all(torch.equal(u, v) for u, v in zip(step_a, step_b))
    # A different mechanism cannot continue this history.
    assert resumed["noise"]["coefficients"] == whole["noise"]["coefficients"]
    with pytest.raises(PrivacyConfigError, match="noise_mechanism"):
        run(compose_cfg([*FAST, *SIGMA, "sampler=cyclic_poisson", "sampler.groups=3",
                         "sampler.expected_batch_size=64", "trainer.max_epochs=5",
                         "run.resume=true"]), tmp_path / "split")  # fmt: skip


def test_the_checkpoint_digest_covers_the_noise_history(compose_cfg, tmp_path) -> None:
    from dpresearch.privacy.callback import dp_state_digest

    run(compose_cfg([*FAST, *SIGMA, *BANDED, "trainer.max_epochs=1"]), tmp_path / "run")
    state = last_checkpoint(tmp_path / "run")["dp_state"]
    before = dp_state_digest(state)
    state["noise_state"]["history"][0][0][0] += 1e-3
    assert dp_state_digest(state) != before


def test_banded_mf_with_secure_noise_runs(compose_cfg, tmp_path) -> None:
    """privacy.randomness=secure: the draws z come from the OS's generator; the history
    still holds the correlated noise the next steps need."""
    s = run(compose_cfg([*FAST, *SIGMA, *BANDED, "privacy.randomness=secure",
                         "trainer.max_epochs=1"]), tmp_path / "run")  # fmt: skip
    assert s["status"] == "completed" and s["noise"]["mechanism"] == "banded_mf"
    state = last_checkpoint(tmp_path / "run")["dp_state"]
    assert state["noise_generator"] is None and len(state["noise_state"]["history"]) == 2
    # The statement names the mechanism and the sampler, and keeps the checkpoint private:
    # it holds past noise even though no generator state is saved.
    st = s["privacy_statement"]
    assert st["mechanism"]["name"].startswith("BandMF") and st["mechanism"]["noise"]["bands"] == 3
    assert "cyclic Poisson" in st["sampler"]["note"] and st["sampler"]["participations"]
    ckpt = next(r for r in st["released"] if r["what"] == "checkpoints/last.ckpt")
    assert ckpt["covered"] is False and "correlated noise" in ckpt["why"]


BLT = ["noise=blt", "noise.buffers=2", "sampler.expected_batch_size=64"]


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """dp-accounting's PLD of one Gaussian mechanism (sensitivity 1)."""
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    return accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier)).get_epsilon(delta)


def test_blt_runs_as_it_is_and_is_one_gaussian_mechanism(compose_cfg, tmp_path) -> None:
    """noise=blt selects cyclic_epochs (one group per step of an epoch); its epsilon is one
    Gaussian mechanism at sigma / sens, sens the (k, b) sensitivity of the BLT actually used,
    against dp-accounting's PLD; eval reads the same epsilon from the checkpoint."""
    from dpresearch.eval import weights_epsilon
    from dpresearch.privacy.mechanisms import toeplitz
    from dpresearch.privacy.mechanisms.strategies import blt_coefficients

    s = run(compose_cfg([*FAST, *SIGMA, *BLT, "trainer.max_epochs=3"]), tmp_path / "run")
    assert s["status"] == "completed"
    period = s["participation_period"]  # cyclic_epochs: groups = N // E
    assert period == s["num_train"] // 64 and s["noise"]["mechanism"] == "blt"
    decay, scale = (torch.tensor(s["noise"][k], dtype=torch.float64) for k in ("decay", "scale"))
    coef = blt_coefficients(decay, scale, s["steps"])
    k = math.ceil(s["steps"] / period)
    sens = math.sqrt(toeplitz.minsep_sensitivity_squared(coef, s["steps"], period, k))
    assert sens == pytest.approx(s["noise"]["sensitivity"], rel=1e-12)
    assert sens > math.sqrt(s["participations"])  # correlation costs sensitivity ...
    assert s["epsilon"] == pytest.approx(gaussian_epsilon(1.5 / sens, s["delta"]), rel=2e-3)
    ckpt = last_checkpoint(tmp_path / "run")
    assert weights_epsilon(ckpt)["epsilon"] == s["epsilon"]
    st = s["privacy_statement"]
    assert st["mechanism"]["name"].startswith("BLT")
    assert "without amplification" in st["sampler"]["note"]
    assert len(ckpt["dp_state"]["noise_state"]["buffers"]) == 2


def test_blt_calibrates_to_the_target_and_refuses_other_samplers(compose_cfg, tmp_path) -> None:
    s = run(compose_cfg([*FAST, *BLT, "trainer.max_epochs=2", "privacy.target_epsilon=2"]),
            tmp_path / "run")  # fmt: skip
    assert 2 * 0.99 <= s["epsilon"] <= 2 and s["planned_epsilon"] == s["epsilon"]
    with pytest.raises(PrivacyConfigError, match="sampler=cyclic_epochs"):
        run(compose_cfg([*FAST, *SIGMA, *BLT, "sampler=poisson"]), tmp_path / "poisson")


def test_blt_resumes_bit_for_bit(compose_cfg, tmp_path) -> None:
    args = [*FAST, *SIGMA, *BLT, "noise.horizon=80"]  # the whole run's steps
    whole = run(compose_cfg([*args, "trainer.max_epochs=4"]), tmp_path / "whole")
    run(compose_cfg([*args, "trainer.max_epochs=2"]), tmp_path / "split")
    resumed = run(compose_cfg([*args, "trainer.max_epochs=4", "run.resume=true"]),
                  tmp_path / "split")  # fmt: skip
    assert resumed["epsilon"] == whole["epsilon"] and resumed["steps"] == whole["steps"] == 80
    a, b = last_checkpoint(tmp_path / "whole"), last_checkpoint(tmp_path / "split")
    assert_same_training(a, b)
    for buf_a, buf_b in zip(a["dp_state"]["noise_state"]["buffers"],
                            b["dp_state"]["noise_state"]["buffers"]):  # fmt: skip
        assert all(torch.equal(u, v) for u, v in zip(buf_a, buf_b))


def test_a_private_selection_refuses_blt_whose_trials_it_cannot_compose() -> None:
    from omegaconf import OmegaConf

    from dpresearch.privacy.mechanisms import BLT, BandedMF
    from dpresearch.privacy.plan import make_plan
    from dpresearch.privacy.selection import PrivateSelection
    from dpresearch.privacy.spec import DPSpec, FixedClipping
    from dpresearch.privacy.tuning import TrialCount

    selection = PrivateSelection(TrialCount("poisson", mean_trials=5.0), score_noise=4.0)
    trainer = OmegaConf.create({"max_epochs": 2})
    args = (DPSpec(target_epsilon=4.0), FixedClipping(1.0))
    with pytest.raises(PrivacyConfigError, match="noise=blt is accounted otherwise"):
        make_plan(*args, CyclicPoissonSampling(expected_batch_size=64, groups="max"), 1000,
                  trainer, selection, BLT(buffers=2))  # fmt: skip
    plan = make_plan(*args, CyclicPoissonSampling(expected_batch_size=64, groups=3), 1000,
                     trainer, selection, BandedMF(bands=3))  # fmt: skip
    assert plan.tuning["selection"] == "private" and plan.participations == math.ceil(32 / 3)
