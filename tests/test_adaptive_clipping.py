"""Adaptive clipping (Andrew et al. 2021, clipping=adaptive): the threshold's trajectory
against a reference implementation of the paper's update on brute-force per-example norms;
its accounting against Google's dp-accounting; runs, records, resume and refusals."""

from __future__ import annotations

import copy
import math

import dp_accounting
import pytest
import torch
from torch.nn import functional as F

from dpresearch.privacy import PrivacyConfigError
from dpresearch.privacy.spec import AdaptiveClipping
from dpresearch.privacy.strategy import DPStrategy
from dpresearch.train import run
from tests.conftest import fit_batches
from tests.helpers.models import MODELS, data
from tests.helpers.references import one
from tests.test_resume import assert_same_training, last_checkpoint

FAST = ["logger=csv", "extras.print_config=false", "trainer.enable_progress_bar=false"]


def reference_run(model, x, y, batches, c0, quantile, eta, expected, lr):
    """The paper's algorithm without noise, one example at a time: clip each example at C_t,
    step by -lr * sum / E, then C_{t+1} = C_t exp(-eta (b_t - quantile)) with b_t the fraction
    of unclipped examples, (sum_i 1[||g_i|| <= C_t] - n / 2) / E + 1 / 2 (the paper's centred
    count with the public expected batch size E)."""
    params = list(model.parameters())
    c, trajectory = c0, [c0]
    for batch in batches:
        total = [torch.zeros_like(p) for p in params]
        unclipped = 0
        for i in batch:
            loss = F.cross_entropy(model(one(x, i)), y[i : i + 1])
            grads = torch.autograd.grad(loss, params)
            norm = float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads)))
            unclipped += norm <= c
            for t, g in zip(total, grads):
                t += min(1.0, c / (norm + 1e-6)) * g
        with torch.no_grad():
            for p, t in zip(params, total):
                p -= lr * t / expected
        b = (unclipped - len(batch) / 2) / expected + 0.5
        c *= math.exp(-eta * (b - quantile))
        trajectory.append(c)
    return trajectory


@pytest.mark.parametrize("engine", ["hooks", "bk", "vmap"])
def test_threshold_follows_the_papers_update(engine: str) -> None:
    """sigma = 0: the threshold's trajectory and the weights equal the reference's, step by
    step, over physical batches; the threshold moves toward the target quantile."""
    torch.manual_seed(0)
    model, (x, y) = MODELS["cnn"](), data("cnn", 24)
    batches = [list(range(0, 10)), list(range(10, 16)), list(range(16, 24)), list(range(0, 24))]
    want = reference_run(copy.deepcopy(model), x, y, batches, 0.05, 0.7, 0.3, 8, 0.5)
    clipping = AdaptiveClipping(max_grad_norm=0.05, target_quantile=0.7, learning_rate=0.3)
    trajectory = [clipping.max_grad_norm]

    class Recording(DPStrategy):
        def backward(self, *args, **kwargs):
            out = super().backward(*args, **kwargs)
            trajectory.append(self.clip_norm)
            return out

    strategy = Recording(engine=engine, factors=clipping.factors, noise_multiplier=0.0,
                         max_grad_norm=0.05, expected_batch_size=8, sample_rate=0.3, delta=1e-5,
                         accountant="rdp", max_physical_batch_size=4, noise_seed=0,
                         adaptive=clipping)  # fmt: skip
    reference = copy.deepcopy(model)
    reference_run(reference, x, y, batches, 0.05, 0.7, 0.3, 8, 0.5)
    fit_batches(model, x, y, batches, strategy, lr=0.5)
    assert trajectory == pytest.approx(want, rel=1e-5)
    assert want[1] > want[0]  # C = 0.05 clips everything: it grows toward the quantile
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_the_count_and_the_gradient_are_one_gaussian_of_multiplier_sigma() -> None:
    """Andrew et al.'s Thm. 1, against dp-accounting: the gradient at sigma_g and the
    centred count (sensitivity 1/2) at count_noise compose, without sampling, exactly as one
    Gaussian of multiplier sigma; a run's epsilon is then DP-SGD's at sigma (PLD)."""
    clipping = AdaptiveClipping(count_noise=3.0)
    for sigma in (0.7, 1.0, 2.5):
        sigma_g = clipping.gradient_multiplier(sigma, 64)
        assert sigma_g > sigma
        pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
        both = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(sigma_g),
                                              dp_accounting.GaussianDpEvent(2 * 3.0)])  # fmt: skip
        joint = pld.compose(both).get_epsilon(1e-5)
        single = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
        alone = single.compose(dp_accounting.GaussianDpEvent(sigma)).get_epsilon(1e-5)
        assert joint == pytest.approx(alone, rel=2e-3)
    with pytest.raises(PrivacyConfigError, match="clipping.count_noise"):
        AdaptiveClipping(count_noise=0.4).gradient_multiplier(1.0, 64)


def test_an_adaptive_run_records_and_accounts_it(compose_cfg, tmp_path) -> None:
    from tests.test_correlated_runs import pld_epsilon

    s = run(compose_cfg([*FAST, "clipping=adaptive", "clipping.max_grad_norm=0.05",
                         "trainer.max_epochs=3"]), tmp_path / "run")  # fmt: skip
    assert s["clipping"] == "adaptive" and s["max_grad_norm"] == 0.05
    sigma, e = s["noise_multiplier"], s["expected_batch_size"]
    assert s["count_noise"] == e / 20  # the paper's default
    assert s["gradient_noise_multiplier"] == pytest.approx((sigma**-2 - (e / 10) ** -2) ** -0.5)
    assert s["final_max_grad_norm"] != 0.05
    theirs = pld_epsilon(s["sample_rate"], sigma, s["steps"], s["delta"])
    assert theirs * (1 - 1e-3) <= s["epsilon"] <= theirs * 1.02
    statement = (tmp_path / "run" / "privacy_statement.md").read_text()
    assert "| metric clip_norm | yes |" in statement and "Thm. 1" in statement


def test_an_adaptive_run_resumes_bit_for_bit(compose_cfg, tmp_path) -> None:
    args = [*FAST, "clipping=adaptive", "clipping.max_grad_norm=0.05",
            "privacy.target_epsilon=null", "privacy.noise_multiplier=1.2"]  # fmt: skip
    whole = run(compose_cfg([*args, "trainer.max_epochs=4"]), tmp_path / "whole")
    run(compose_cfg([*args, "trainer.max_epochs=2"]), tmp_path / "split")
    resumed = run(compose_cfg([*args, "trainer.max_epochs=4", "run.resume=true"]),
                  tmp_path / "split")  # fmt: skip
    assert resumed["final_max_grad_norm"] == whole["final_max_grad_norm"]
    assert resumed["epsilon"] == whole["epsilon"]
    assert_same_training(last_checkpoint(tmp_path / "whole"), last_checkpoint(tmp_path / "split"))
    with pytest.raises(PrivacyConfigError, match="adaptive clipping"):
        run(compose_cfg([*args, "clipping.target_quantile=0.9", "trainer.max_epochs=5",
                         "run.resume=true"]), tmp_path / "split")  # fmt: skip


def test_adaptive_clipping_refusals_name_the_key(compose_cfg, tmp_path) -> None:
    with pytest.raises(PrivacyConfigError, match="noise=independent"):
        run(compose_cfg([*FAST, "clipping=adaptive", "noise=banded_mf",
                         "sampler.expected_batch_size=64"]), tmp_path / "a")  # fmt: skip
    for key, bad in (("target_quantile", 1.5), ("learning_rate", 0), ("count_noise", -1)):
        with pytest.raises(PrivacyConfigError, match=f"clipping.{key}"):
            AdaptiveClipping(**{key: bad})


def test_padding_rows_do_not_count(compose_cfg, tmp_path) -> None:
    """Masked Poisson pads each batch with zero-gradient rows; they are neither clipped nor
    unclipped examples, so the threshold moves exactly as without padding."""
    args = [*FAST, "clipping=adaptive", "clipping.max_grad_norm=0.05", "trainer.max_epochs=2",
            "sampler.max_physical_batch_size=100"]  # fmt: skip
    plain = run(compose_cfg(args), tmp_path / "plain")
    masked = run(compose_cfg([*args, "sampler=poisson_masked"]), tmp_path / "masked")
    assert masked["final_max_grad_norm"] == pytest.approx(plain["final_max_grad_norm"], rel=1e-9)
