"""The bug-injection suite: every injected bug (dpresearch.privacy.sabotage) is caught by the
audit's conformance checks or its bound, and no clean configuration is flagged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from scipy import stats

from dpresearch.audit import run_audit
from dpresearch.privacy.conformance import _two_sided_chi2
from dpresearch.privacy.sabotage import BUGS

ROOT = Path(__file__).resolve().parents[1]
FAST = ["logger=csv", "trainer.enable_progress_bar=false", "trainer.max_epochs=3"]
CHECKS = ["audit.kind=none", *FAST]


def audited(overrides: list[str], out: Path) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("audit", overrides=overrides)
    return run_audit(cfg, out)


def caught_by(record: dict) -> set[str]:
    return set(record["flagged"]) | ({"bound"} if record["violated"] else set())


@pytest.mark.parametrize(
    "overrides",
    [[f"clipping.engine={e}", f"sampler={s}"] for e in ("hooks", "ghost", "bk", "vmap")
     for s in ("poisson", "poisson_masked")]
    + [["finetune=head_only"], ["finetune=bias_only", "clipping.engine=hooks"],
       ["clipping=automatic"], ["clipping=adaptive"], ["noise=banded_mf", "noise.bands=2"],
       ["audit.kind=example", "audit.canaries=100"]],
    ids=lambda o: "-".join(v.split("=")[1] for v in o),
)  # fmt: skip
def test_clean_configurations_are_not_flagged(overrides, tmp_path) -> None:
    record = audited([*CHECKS, *overrides], tmp_path)
    assert record["consistent"] and not record["flagged"], record["checks"]
    ran = {c["name"] for c in record["checks"] if c["passed"] is not None}
    assert {"clipping", "scale", "scope", "accounting"} <= ran
    if "noise=banded_mf" not in overrides:
        assert {"noise", "sampling"} <= ran


CAUGHT = [  # (bug, overrides, the checks that must flag it)
    ("noise", [], {"noise"}),
    ("clipping", [], {"clipping"}),
    ("clipping_layer", ["audit.kind=example", "audit.canaries=100"], {"clipping"}),
    ("clipping_layer", ["clipping.engine=hooks"], {"clipping"}),
    ("norm_layer", ["audit.kind=example", "audit.canaries=100"], {"clipping"}),
    ("norm_layer", ["clipping.engine=vmap"], {"clipping"}),
    ("shuffle", [], {"sampling"}),
    ("realized_batch", [], {"scale"}),
    ("frozen_noise", ["finetune=head_only"], {"scope"}),
    ("frozen_grad", ["finetune=head_only"], {"scope"}),
]
ELSEWHERE = {"resume_accountant", "noise_per_rank"}  # their own tests below


@pytest.mark.parametrize("bug, overrides, expected", CAUGHT)
def test_injected_bug_is_caught(bug, overrides, expected, tmp_path) -> None:
    record = audited([*CHECKS, *overrides, f"audit.sabotage={bug}"], tmp_path)
    assert not record["consistent"] and expected <= caught_by(record), record["checks"]


def test_noise_switched_off_is_caught_by_the_bound_too(tmp_path) -> None:
    record = audited([*FAST, "audit.kind=gradient", "audit.sabotage=noise"], tmp_path)
    assert caught_by(record) == {"noise", "bound"}


def test_a_resume_that_restarts_the_accountant_is_caught(tmp_path) -> None:
    """The checks count released steps in the checkpoint; the resumed accountant's count
    (and so its epsilon) falls short of them."""
    sigma = ["privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"]
    first = audited([*CHECKS, *sigma, "trainer.max_epochs=2"], tmp_path)
    assert first["consistent"]
    resumed = [*CHECKS, *sigma, "trainer.max_epochs=4", "run.resume=true"]
    broken = audited([*resumed, "audit.sabotage=resume_accountant"], tmp_path)
    assert caught_by(broken) == {"accounting"}
    accounting = next(c for c in broken["checks"] if c["name"] == "accounting")
    assert "20 steps released, the accountant composed 10" in accounting["detail"]


@pytest.mark.parametrize("bug", ["none", "noise_per_rank"])
def test_noise_per_rank_under_ddp_is_caught(bug, tmp_path) -> None:
    """Two gloo processes: each adding sigma C / 2 (the averaging mistake) leaves sigma C /
    sqrt(2) in the reduced sum; the correct run (rank 0 alone adds noise) passes."""
    out = tmp_path / bug
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "dpresearch.audit", *CHECKS, "trainer=ddp_cpu",
         "trainer.devices=2", f"audit.sabotage={bug}", f"hydra.run.dir={out}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "audit.json").read_text())
    assert caught_by(record) == (set() if bug == "none" else {"noise"}), record["checks"]
    noise = next(c for c in record["checks"] if c["name"] == "noise")
    assert ("1.00" if bug == "none" else "0.70") in noise["detail"]


def test_every_bug_is_in_the_suite() -> None:
    """Each injected bug has a test here that shows it caught."""
    assert {bug for bug, _, _ in CAUGHT} | ELSEWHERE == set(BUGS) - {"none"}


def test_gradient_canaries_observe_the_mechanism_itself(tmp_path) -> None:
    """Without noise, the auditor's observation (released minus the others' clipped sum, in
    units of C) is exactly 1 when a canary joined and 0 when not: an excluded canary's summed
    score is 0, an included one's a whole number of joins, about q per step."""
    audited([*FAST, "audit.kind=gradient", "audit.canaries=2000", "audit.sabotage=noise"],
            tmp_path)  # fmt: skip
    record = json.loads((tmp_path / "canaries.json").read_text())
    assert record["private"] is False
    summed, included = np.array(record["scores"]["sum"]), np.array(record["included"])
    np.testing.assert_allclose(summed[~included], 0, atol=1e-3)
    np.testing.assert_allclose(summed[included], np.round(summed[included]), atol=1e-3)
    q = json.loads((tmp_path / "summary.json").read_text())["sample_rate"]
    joins = summed[included].mean()
    steps = record["steps"]
    assert abs(joins - q * steps) < 4 * np.sqrt(q * (1 - q) * steps / included.sum())


def test_statistical_checks_fire_at_their_false_alarm_rate() -> None:
    """The two-sided chi-square p-value is uniform under the null: at 0.05 a correct spread
    is flagged ~5% of the time, a spread of 0 or 1.5x always."""
    rng = np.random.default_rng(0)
    dof = 200
    p = np.array([_two_sided_chi2(float(stats.chi2.rvs(dof, random_state=rng)), dof)
                  for _ in range(2000)])  # fmt: skip
    assert abs((p < 0.05).mean() - 0.05) < 0.015
    assert _two_sided_chi2(0.0, dof) < 1e-12 and _two_sided_chi2(2.25 * dof, dof) < 1e-12
