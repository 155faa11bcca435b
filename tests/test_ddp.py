"""Data parallel DP-SGD on Lightning's DDP (gloo processes on this CPU) against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dpresearch.data.samplers import MaskedPoissonSampling, PoissonSampling, ShuffleSampling
from dpresearch.train import ddp_options, run

ROOT = Path(__file__).resolve().parents[1]
FAST = ["logger=csv", "extras.print_config=false", "trainer.enable_progress_bar=false"]
# One logical step per Lightning batch; plain SGD so a step is exactly -lr * gradient.
STEP = ["optimizer=sgd", "optimizer.momentum=0", "optimizer.lr=0.5", "trainer.max_epochs=1",
        "sampler.max_physical_batch_size=48"]  # fmt: skip
NOISELESS = ["privacy.target_epsilon=null", "privacy.noise_multiplier=0"]


def run_py(
    *args: str, cwd: Path, timeout: float = 300, wandb: str = "disabled"
) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": wandb, "HYDRA_FULL_ERROR": "1",
           "PYTHONPATH": str(ROOT / "tests")}  # fmt: skip
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def trained_state(out: Path) -> dict[str, torch.Tensor]:
    (ckpt,) = out.rglob("last.ckpt")
    return torch.load(ckpt, weights_only=False)["state_dict"]


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_poisson_shares_partition_the_one_process_batch_evenly() -> None:
    n, world = 1000, 3
    spec = PoissonSampling(expected_batch_size=100)
    whole = list(spec.build(n, seed=4))
    shares = [list(spec.build(n, seed=4, rank=r, world_size=world)) for r in range(world)]
    assert all(len(s) == len(whole) for s in shares)  # lockstep: the same number of steps
    for t, batch in enumerate(whole):
        parts = [shares[r][t] for r in range(world)]
        assert sorted(sum(parts, [])) == batch  # disjoint, and together the whole batch
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1  # balanced: no straggler rank


def test_poisson_union_over_ranks_has_binomial_size() -> None:
    """The global logical batch (the union of every rank's batch) is a Poisson sample of the
    whole dataset: size mean qN, variance q(1-q)N, and each example joins at rate q."""
    n, world, q, steps = 900, 4, 0.05, 3000
    spec = PoissonSampling(expected_batch_size=round(q * n))
    samplers = [spec.build(n, seed=7, rank=r, world_size=world) for r in range(world)]
    sizes, joined = [], np.zeros(n)
    while len(sizes) < steps:
        for parts in zip(*samplers):
            union = sum(parts, [])
            sizes.append(len(union))
            joined[union] += 1
    sizes = np.array(sizes)
    mean, var = q * n, q * (1 - q) * n
    assert abs(sizes.mean() - mean) < 4 * np.sqrt(var / len(sizes))
    assert abs(sizes.var(ddof=1) - var) < 4 * var * np.sqrt(2 / len(sizes))
    rates = joined / len(sizes)
    assert np.all(np.abs(rates - q) < 5 * np.sqrt(q * (1 - q) / len(sizes)))


def test_masked_and_shuffle_samplers_shard_too() -> None:
    masked = MaskedPoissonSampling(expected_batch_size=40, max_physical_batch_size=16)
    plain = PoissonSampling(expected_batch_size=40)
    for padded, batch in zip(masked.build(400, seed=1, rank=1, world_size=2),
                             plain.build(400, seed=1, rank=1, world_size=2)):  # fmt: skip
        assert len(padded) % 16 == 0 and [i for i in padded if i != -1] == batch
    shuffle = ShuffleSampling(expected_batch_size=10)
    whole = list(shuffle.build(100, seed=2))
    halves = [list(shuffle.build(100, seed=2, rank=r, world_size=2)) for r in range(2)]
    assert [sorted(a + b) for a, b in zip(*halves)] == [sorted(b) for b in whole]


def test_ddp_misuse_is_refused_before_training(compose_cfg, monkeypatch) -> None:
    for var in ("SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    cfg = compose_cfg(["trainer=ddp_cpu"])
    with pytest.raises(ValueError, match="hydra/launcher=slurm"):
        ddp_options(cfg.trainer, multirun=True)
    assert ddp_options(cfg.trainer, multirun=False) == {"backend": "gloo", "timeout_s": 1800}
    assert ddp_options(compose_cfg([]).trainer, multirun=True) is None
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")  # srun with 2 tasks, single-device trainer
    with pytest.raises(ValueError, match="add trainer=ddp"):
        ddp_options(compose_cfg([]).trainer, multirun=False)


@pytest.mark.parametrize(
    "method",
    [[*NOISELESS, "clipping.engine=hooks"], [*NOISELESS, "clipping.engine=ghost"],
     [*NOISELESS, "clipping.engine=bk"], [*NOISELESS, "clipping=automatic", "clipping.engine=bk"],
     [*NOISELESS, "sampler=poisson_masked", "clipping.engine=bk"],
     [*NOISELESS, "finetune=bias_only", "clipping.engine=hooks"],
     ["privacy=none"], ["privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"],
     ["privacy.target_epsilon=null", "privacy.noise_multiplier=1.0", "noise=banded_mf",
      "noise.bands=2"],
     ["privacy.target_epsilon=null", "privacy.noise_multiplier=1.0", "noise=blt",
      "noise.buffers=2"],
     ["privacy.target_epsilon=null", "privacy.noise_multiplier=1.0", "clipping=adaptive",
      "clipping.max_grad_norm=0.1"],
     [*NOISELESS, "privacy.unit=user", "dataset.users=300", "dataset.user_skew=1.0",
      "privacy.examples_per_user=4", "sampler.expected_batch_size=40", "clipping.engine=bk"]],
    ids=["hooks", "ghost", "bk", "automatic-bk", "masked-bk", "bias_only-hooks", "nonprivate",
         "noisy-auto", "noisy-banded_mf", "noisy-blt", "noisy-adaptive", "user-bk"],
)  # fmt: skip
def test_two_processes_equal_one_process(method, compose_cfg, tmp_path) -> None:
    """Noise 0: after an epoch of SGD steps the parameters of 2 gloo processes equal those of
    one process on the union batches (the samplers draw the same global Poisson batches).
    With noise on too: rank 0 draws the same noise as the single process, once per step
    (correlated noise too: its history lives on rank 0; cyclic Poisson batches are shared)."""
    args = [*FAST, *STEP, *method]
    one = tmp_path / "one"
    run(compose_cfg(args), one)
    two = tmp_path / "two"
    done = run_py(*args, "trainer=ddp_cpu", "trainer.devices=2", f"hydra.run.dir={two}",
                  cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = trained_state(one), trained_state(two)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)
    s1, s2 = summary(one), summary(two)
    assert s2["world_size"] == 2 and s2["steps"] == s1["steps"] == s1["steps_per_epoch"]
    assert s2["test_accuracy"] == pytest.approx(s1["test_accuracy"])
    assert s2.get("epsilon") == s1.get("epsilon")  # the accountant counts each step once


def test_noise_enters_once_not_once_per_rank(tmp_path) -> None:
    """A model whose per-example gradients are all zero: each update is -lr * noise / E. Over
    T steps from zero the parameters are N(0, T (lr sigma C / E)^2); their empirical std gives
    sigma*C, which would be sqrt(2) larger if both ranks added noise."""
    sigma, clip, batch, lr = 2.0, 0.7, 32, 0.5
    out = tmp_path / "noise"
    done = run_py(*FAST, "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_epochs=1",
                  "model._target_=ddp_helpers.ZeroOutputNet",
                  "clipping.engine=bk", f"clipping.max_grad_norm={clip}",
                  "privacy.target_epsilon=null", f"privacy.noise_multiplier={sigma}",
                  f"sampler.expected_batch_size={batch}", "optimizer=sgd",
                  "optimizer.momentum=0", f"optimizer.lr={lr}", f"hydra.run.dir={out}",
                  cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    steps = summary(out)["steps"]
    params = torch.cat([v.flatten() for v in trained_state(out).values()])
    assert len(params) == 650 and steps > 30
    measured = params.std().item() * batch / (lr * np.sqrt(steps))
    # 650 draws: the std estimate is within ~3% (one s.e.); sqrt(2) would be 41% off.
    assert measured == pytest.approx(sigma * clip, rel=0.12)


@pytest.mark.parametrize("rank", [1, 0])
def test_crashing_rank_brings_the_job_down(rank, tmp_path) -> None:
    """A rank raises in epoch 2: the job ends (no hang in the all-reduce), non-zero, and the
    run folder keeps epoch 1's metrics and a failed summary naming that rank's error."""
    out = tmp_path / "crash"
    t0 = time.monotonic()
    done = run_py(*FAST, "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_epochs=3",
                  "model._target_=ddp_helpers.FailingNet", f"+model.rank={rank}",
                  "clipping.engine=bk", f"hydra.run.dir={out}", cwd=tmp_path,
                  timeout=240)  # fmt: skip
    assert done.returncode != 0
    assert time.monotonic() - t0 < 120
    saved = summary(out)
    assert saved["status"] == "failed", saved
    assert "deliberate failure" in saved["error"] and rank in saved["failed_ranks"]
    log = out / ("error.log" if rank == 0 else f"error.rank{rank}.log")
    assert "deliberate failure" in log.read_text()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r["stage"] == "train" and r["epoch"] == 0 for r in rows)


def test_one_wandb_run_per_job_from_rank_zero(tmp_path) -> None:
    out = tmp_path / "wandb_job"
    done = run_py("logger=wandb", "extras.print_config=false", "trainer.enable_progress_bar=false",
                  "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_epochs=1",
                  f"hydra.run.dir={out}", cwd=tmp_path, wandb="offline")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list(out.rglob("offline-run-*"))
    assert len(runs) == 1, runs
    assert summary(out)["status"] == "completed" and summary(out)["world_size"] == 2


def test_ddp_run_resumes_bit_for_bit(tmp_path) -> None:
    """2 gloo processes: 2 epochs resumed to 4 equal 4 uninterrupted epochs exactly (rank 0
    saves the DP state and every rank loads it), with the same epsilon."""
    args = [*FAST, "trainer=ddp_cpu", "trainer.devices=2", "privacy.target_epsilon=null",
            "privacy.noise_multiplier=1.0"]  # fmt: skip
    whole, split = tmp_path / "whole", tmp_path / "split"
    for extra, out in [(["trainer.max_epochs=4"], whole), (["trainer.max_epochs=2"], split),
                       (["trainer.max_epochs=4", "run.resume=true"], split)]:  # fmt: skip
        done = run_py(*args, *extra, f"hydra.run.dir={out}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = trained_state(whole), trained_state(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary(split)["epsilon"] == summary(whole)["epsilon"]
    assert summary(split)["steps"] == 20 and summary(split)["resumed_from"]
