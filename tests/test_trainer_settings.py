"""Lightning settings that change a run's length are honoured by the privacy plan."""

from __future__ import annotations

import pytest

from dpresearch.privacy import compute_epsilon
from dpresearch.train import run
from dpresearch.trainer_settings import run_length

FAST = ["logger=csv", "extras.print_config=false", "trainer.enable_progress_bar=false",
        "run.checkpoint=false"]  # fmt: skip


@pytest.mark.parametrize(
    "overrides,steps",
    [
        (["+trainer.max_steps=8"], 8),  # cuts the 30 epochs short
        (["trainer.max_epochs=null", "+trainer.max_steps=8"], 8),
        (["trainer.max_epochs=2", "+trainer.limit_train_batches=0.5"], 4),  # 5 per epoch
    ],
)
def test_noise_is_calibrated_for_the_steps_that_run(compose_cfg, tmp_path, overrides, steps):
    summary = run(compose_cfg([*FAST, *overrides]), tmp_path / "run")
    assert summary["status"] == "completed"
    assert summary["steps"] == summary["planned_steps"] == steps
    # Calibrated for exactly these steps: epsilon within 1% below the target of 3.
    assert 0.99 * 3 <= summary["epsilon"] <= 3
    assert (
        summary["epsilon"]
        == compute_epsilon(
            summary["sample_rate"], summary["noise_multiplier"], steps, summary["delta"]
        ).epsilon
    )


def test_fast_dev_run_is_recorded_as_a_debug_run(compose_cfg, tmp_path) -> None:
    summary = run(compose_cfg([*FAST, "+trainer.fast_dev_run=true"]), tmp_path / "run")
    assert summary["status"] == "debug" and summary["steps"] == 1


def test_run_length_follows_lightning() -> None:
    from omegaconf import OmegaConf

    def length(**kw):
        return run_length(OmegaConf.create({"max_epochs": 3, **kw}), 10)

    assert length().steps == 30
    assert length(max_steps=7).steps == 7
    assert length(limit_train_batches=1).steps == 3  # an int: one batch per epoch
    assert length(limit_train_batches=1.0).steps == 30  # a float: the whole epoch
    assert length(limit_train_batches=0.25).steps == 6
    assert length(fast_dev_run=True).debug and length(fast_dev_run=True).steps == 1
