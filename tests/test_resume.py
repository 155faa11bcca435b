"""Resuming without losing privacy budget, atomic checkpoints, the budget guard, secure noise."""

from __future__ import annotations

import errno
import json
import math
import re
from pathlib import Path

import pytest
import torch
from scipy import stats

from dpresearch import atomic
from dpresearch.privacy import PrivacyConfigError, compute_epsilon
from dpresearch.privacy.noise import secure_normal
from dpresearch.train import run

FAST = ["logger=csv", "extras.print_config=false", "trainer.enable_progress_bar=false"]
SIGMA = ["privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"]


def last_checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)


def assert_same_training(a: dict, b: dict) -> None:
    """Model, optimizer state and DP state equal bit for bit."""
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(),
                      b["optimizer_states"][0]["state"].values()):  # fmt: skip
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key
    assert a["dp_state"]["dp_steps"] == b["dp_state"]["dp_steps"]
    assert torch.equal(a["dp_state"]["noise_generator"], b["dp_state"]["noise_generator"])
    assert a["global_step"] == b["global_step"]


@pytest.mark.parametrize("extra", [[], ["sampler=poisson_masked", "clipping.engine=hooks"]],
                         ids=["bk", "masked-hooks"])  # fmt: skip
def test_resumed_run_equals_uninterrupted_run(extra, compose_cfg, tmp_path) -> None:
    args = [*FAST, *SIGMA, *extra]
    whole = run(compose_cfg([*args, "trainer.max_epochs=4"]), tmp_path / "whole")
    first = run(compose_cfg([*args, "trainer.max_epochs=2"]), tmp_path / "split")
    assert first["steps"] == 10
    resumed = run(compose_cfg([*args, "trainer.max_epochs=4", "run.resume=true"]),
                  tmp_path / "split")  # fmt: skip
    assert resumed["resumed_from"].endswith("checkpoints/last.ckpt")
    assert resumed["steps"] == whole["steps"] == 20
    assert resumed["epsilon"] == whole["epsilon"] > first["epsilon"]  # not restarted from 0
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    assert_same_training(last_checkpoint(tmp_path / "whole"), last_checkpoint(tmp_path / "split"))
    # metrics.jsonl continues: epochs 0-3 once each for training.
    rows = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["stage"] == "train"] == [0, 1, 2, 3]


def test_crash_mid_epoch_resumes_from_last_checkpoint(compose_cfg, tmp_path) -> None:
    """A crash in epoch 3 leaves epoch 2's checkpoint and a failed summary; resuming from it
    (ckpt_path= into a new folder) ends equal to the run that never crashed."""
    model = ["model._target_=tests.ddp_helpers.FailingNet", "+model.rank=0",
             "sampler.max_physical_batch_size=1024"]  # one forward pass per step  # fmt: skip
    args = [*FAST, *SIGMA, *model, "trainer.max_epochs=4"]
    whole = run(compose_cfg([*args, "+model.fail_at=1000000"]), tmp_path / "whole")
    with pytest.raises(RuntimeError, match="deliberate failure"):
        run(compose_cfg([*args, "+model.fail_at=13"]), tmp_path / "crashed")
    crashed = json.loads((tmp_path / "crashed" / "summary.json").read_text())
    assert crashed["status"] == "failed" and "deliberate failure" in crashed["error"]
    assert last_checkpoint(tmp_path / "crashed")["dp_state"]["dp_steps"] == 10
    ckpt = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    resumed = run(compose_cfg([*args, "+model.fail_at=1000000", f"ckpt_path={ckpt}"]),
                  tmp_path / "resumed")  # fmt: skip
    assert resumed["epsilon"] == whole["epsilon"] and resumed["steps"] == 20
    assert_same_training(last_checkpoint(tmp_path / "whole"), last_checkpoint(tmp_path / "resumed"))


def test_crash_while_saving_keeps_the_previous_checkpoint(compose_cfg, tmp_path, monkeypatch):
    out = tmp_path / "run"
    writes = []
    real_write = atomic._write_file

    def failing_write(path, data):  # the second checkpoint dies half written
        if not re.search(r"\.ckpt\.\d+\.tmp$", path.name):
            return real_write(path, data)
        writes.append(len(data))
        if len(writes) == 2:
            real_write(path, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        return real_write(path, data)

    monkeypatch.setattr(atomic, "_write_file", failing_write)
    with pytest.raises(OSError, match="No space left"):
        run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=3"]), out)
    monkeypatch.undo()
    saved = last_checkpoint(out)  # whole and loadable: epoch 1's
    assert saved["epoch"] == 0 and saved["dp_state"]["dp_steps"] == 5
    left = {p.name for p in (out / "checkpoints").iterdir()}
    assert left <= {"last.ckpt", "last.ckpt.sha256", "previous.ckpt", "previous.ckpt.sha256"}
    resumed = run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=3", "run.resume=true"]), out)
    assert resumed["status"] == "completed" and resumed["steps"] == 15


def test_budget_guard_stops_before_the_step_that_exceeds_the_target(compose_cfg, tmp_path, caplog):
    """Calibrated for 2 epochs at epsilon 3, then resumed for 4 epochs with a target of 3.5:
    the checkpoint's sigma is kept and training stops at the last step within 3.5."""
    out = tmp_path / "run"
    first = run(compose_cfg([*FAST, "trainer.max_epochs=2", "privacy.target_epsilon=3"]), out)
    assert first["stopped_by_budget"] is False and first["epsilon"] <= 3
    more = run(compose_cfg([*FAST, "trainer.max_epochs=4", "privacy.target_epsilon=3.5",
                            "run.resume=true"]), out)  # fmt: skip
    assert more["stopped_by_budget"] is True and more["status"] == "completed"
    assert more["noise_multiplier"] == first["noise_multiplier"]
    q, sigma, delta = more["sample_rate"], more["noise_multiplier"], more["delta"]
    steps = more["steps"]
    assert 10 < steps < 20 and more["epsilon"] <= 3.5
    assert compute_epsilon(q, sigma, steps + 1, delta).epsilon > 3.5
    # The plan as run: 20 steps with the checkpoint's sigma (not the config's calibration).
    assert more["planned_steps"] == 20
    assert more["planned_epsilon"] == compute_epsilon(q, sigma, 20, delta).epsilon
    assert last_checkpoint(out)["dp_state"]["dp_steps"] == steps  # saved where it stopped
    assert json.loads((out / "summary.json").read_text())["stopped_by_budget"] is True
    assert f"stopping before step {steps + 1}" in caplog.text
    # Already at the target: resuming takes no step at all.
    again = run(compose_cfg([*FAST, "trainer.max_epochs=6", "privacy.target_epsilon=3.5",
                             "run.resume=true"]), out)  # fmt: skip
    assert again["steps"] == steps and again["stopped_by_budget"] is True


def test_budget_guard_cannot_be_bypassed(compose_cfg, tmp_path) -> None:
    """Lightning's minimums ignore should_stop, and a resume cannot un-spend epsilon: both
    are refused before a step is taken, and the checkpoint is left as it was."""
    out = tmp_path / "run"
    first = run(compose_cfg([*FAST, "trainer.max_epochs=2", "privacy.target_epsilon=3"]), out)
    resume = [*FAST, "trainer.max_epochs=4", "run.resume=true"]
    for extra in (["+trainer.min_epochs=4"], ["+trainer.min_steps=20"]):
        with pytest.raises(PrivacyConfigError, match="min_epochs/min_steps force 20 steps"):
            run(compose_cfg([*resume, "privacy.target_epsilon=3.5", *extra]), out)
    with pytest.raises(
        PrivacyConfigError, match=r"already spent epsilon 2\.9\d+.*target_epsilon=1"
    ):
        run(compose_cfg([*resume, "privacy.target_epsilon=1"]), out)
    # Each failed resume has its own record; the completed run's summary stays as it was.
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    for attempt in (1, 2, 3):
        failed = json.loads((out / f"summary.resume_{attempt}.json").read_text())
        assert failed["status"] == "failed" and failed["attempt"] == attempt
    assert last_checkpoint(out)["dp_state"]["dp_steps"] == first["steps"] == 10
    # Minimums within the budget are honoured.
    ok = run(compose_cfg([*resume, "privacy.target_epsilon=3.5", "+trainer.min_epochs=2"]), out)
    assert ok["status"] == "completed" and ok["epsilon"] <= 3.5


def test_resume_refuses_a_different_mechanism(compose_cfg, tmp_path) -> None:
    out = tmp_path / "run"
    run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=1"]), out)
    for change, named in [("sampler.expected_batch_size=128", "sample_rate"),
                          ("privacy.noise_multiplier=2.0", "noise_multiplier"),
                          ("clipping.max_grad_norm=0.5", "max_grad_norm")]:  # fmt: skip
        cfg = compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=2", "run.resume=true", change])
        with pytest.raises(PrivacyConfigError, match=named):
            run(cfg, out)


def test_resume_needs_a_checkpoint(compose_cfg, tmp_path) -> None:
    with pytest.raises(ValueError, match="hydra.run.dir"):
        run(compose_cfg([*FAST, "run.resume=true"]), tmp_path / "nothing")
    with pytest.raises(ValueError, match="not a file"):
        run(compose_cfg([*FAST, f"ckpt_path={tmp_path}/missing.ckpt"]), tmp_path / "x")


def test_secure_noise_is_standard_normal_and_not_reproducible(compose_cfg, tmp_path) -> None:
    z = secure_normal(200_001, 1.0)
    assert z.dtype == torch.float64 and len(z) == 200_001
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-4
    assert abs(float(z.mean())) < 5 / math.sqrt(len(z)) and abs(float(z.std()) - 1) < 0.01
    scaled = secure_normal(100_000, 3.0)
    assert abs(float(scaled.std()) - 3) < 0.05
    args = [*FAST, *SIGMA, "trainer.max_epochs=1", "privacy.randomness=secure"]
    a = run(compose_cfg(args), tmp_path / "a")
    b = run(compose_cfg(args), tmp_path / "b")
    assert a["status"] == b["status"] == "completed" and a["epsilon"] == b["epsilon"]
    wa, wb = last_checkpoint(tmp_path / "a"), last_checkpoint(tmp_path / "b")
    assert any(not torch.equal(wa["state_dict"][k], wb["state_dict"][k]) for k in wa["state_dict"])
    # Neither the noise stream nor the batches can be recovered from the checkpoint.
    assert wa["dp_state"]["noise_generator"] is None
    assert wa["dp_state"]["randomness"] == "secure"
    sampler_states = [v["train_batch_sampler"] for k, v in wa.items()
                      if isinstance(v, dict) and "train_batch_sampler" in v]  # fmt: skip
    assert sampler_states == [{"secure": True}]
    # Resuming a secure run as seeded (or the reverse) is refused: one randomness per run.
    with pytest.raises(PrivacyConfigError, match="randomness"):
        ckpt = f"ckpt_path={tmp_path}/a/checkpoints/last.ckpt"
        run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=2", ckpt]), tmp_path / "c")


def test_the_old_secure_rng_switch_is_refused_with_its_replacement(compose_cfg, tmp_path) -> None:
    with pytest.raises(PrivacyConfigError, match="privacy.randomness=secure"):
        run(compose_cfg([*FAST, "privacy.secure_rng=true"]), tmp_path / "old")


def test_noise_is_never_drawn_in_reduced_precision() -> None:
    from dpresearch.privacy.noise import add_noise

    summed = torch.zeros(200_000, dtype=torch.bfloat16)
    noised = add_noise(summed, 3.0, torch.Generator().manual_seed(0))
    assert noised.dtype == torch.float32
    assert abs(float(noised.std()) - 3.0) < 0.03
    assert len(torch.unique(noised[:1000])) == 1000  # float32 values, not bfloat16's grid
