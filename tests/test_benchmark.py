"""The benchmark runs end to end (tiny config, not timed) through the strategy run.py trains
with, and its memory accounting is real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpresearch.benchmark.memory import cpu_transient_peak_bytes
from dpresearch.benchmark.runner import parse_method

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_cli_writes_rows_for_every_method(tmp_path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "dpresearch.benchmark", "bench.steps=2", "bench.warmup=1",
           "bench.batch_size=16", "sampler.max_physical_batch_size=8", f"bench.output={out}",
           "bench.scopes=[full,bias_only]", "bench.rounds=1", "logger=none",
           "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0",
           f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "WANDB_MODE": "disabled"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    rows = {(r["scope"], r["method"]): r for r in record["rows"]}
    methods = ["nonprivate", "dp_hooks", "dp_ghost", "dp_bk"]
    assert list(rows) == [(s, m) for s in ("full", "bias_only") for m in methods]
    assert rows["full", "nonprivate"]["ratio_to_nonprivate"] == 1.0
    assert rows["bias_only", "nonprivate"]["ratio_to_reference"] > 0
    assert {r["physical_batch_size"] for r in rows.values()} == {8}
    assert rows["bias_only", "dp_bk"]["memory_ratio_to_dp_full"] is not None
    for r in rows.values():
        assert r["examples_per_s"] > 0 and r["peak_memory_mb"] > 0
    assert record["config"]["bench"]["batch_size"] == 16
    assert "dp_bk" in result.stdout


def test_transient_peak_counts_live_tensors_not_totals() -> None:
    mb8 = 2 * 2**20  # float32 elements in 8 MiB

    def one_at_a_time():
        for _ in range(3):
            a = torch.ones(mb8)
            del a

    def two_alive():
        a = torch.ones(mb8)
        b = torch.ones(mb8)
        del a, b

    assert 8 * 2**20 <= cpu_transient_peak_bytes(one_at_a_time) < 12 * 2**20
    assert 16 * 2**20 <= cpu_transient_peak_bytes(two_alive) < 20 * 2**20


def test_unknown_method_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"dp_bk"):
        parse_method("dp_fast")
    assert parse_method("dp_bk_secure") == "bk" and parse_method("nonprivate") is None
    assert parse_method("opacus_ghost") == "opacus_ghost"


@pytest.fixture
def compose_run():
    """run.py's benchmark config plus overrides, as the benchmark composes a variant's."""
    from hydra import compose, initialize_config_dir

    from dpresearch.benchmark.__main__ import merge_overrides

    # sigma given, not calibrated (a PRV calibration takes seconds): the step is the same
    user = ["privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"]
    choices = {"privacy": "dp", "sampler": "poisson", "finetune": "full"}
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        yield lambda variant: compose(
            config_name="benchmark", overrides=merge_overrides(user, variant, choices)
        )


def test_a_dp_step_of_the_benchmark_is_the_strategys(compose_run, monkeypatch, tmp_path) -> None:
    """The benchmark trains through DPStrategy (its backward: noise, scale, hooks) and the
    sampler's own batches: one strategy step per logical step, each batch a Poisson draw."""
    from dpresearch.benchmark.runner import Variant, benchmark
    from dpresearch.privacy.strategy import DPStepping, PhysicalBatching

    calls = {"dp": 0, "nonprivate": 0, "physical": []}
    dp_backward, plain_backward = DPStepping.backward, PhysicalBatching.backward
    physical = PhysicalBatching._physical_steps

    def count_dp(self, *args, **kwargs):
        calls["dp"] += 1
        return dp_backward(self, *args, **kwargs)

    def count_plain(self, *args, **kwargs):
        calls["nonprivate"] += 1
        return plain_backward(self, *args, **kwargs)

    def record_physical(self, args, kwargs):
        steps = physical(self, args, kwargs)
        calls["physical"].append(len(steps))
        return steps

    monkeypatch.setattr(DPStepping, "backward", count_dp)
    monkeypatch.setattr(PhysicalBatching, "backward", count_plain)
    monkeypatch.setattr(PhysicalBatching, "_physical_steps", record_physical)
    variants = [Variant("nonprivate", physical=8), Variant("dp_bk", physical=8),
                Variant("dp_bk", sampler="poisson_masked", physical=8)]  # fmt: skip
    rows, skipped = benchmark(compose_run, variants, batch_size=32, steps=2, warmup=1,
                              rounds=2, workdir=tmp_path)  # fmt: skip
    assert not skipped and len(rows) == 3
    assert calls["dp"] == 2 * 2 * 4 and calls["nonprivate"] == 2 * 4  # rounds x blocks x steps
    assert max(calls["physical"]) >= 4  # logical batches of ~32 split into physical ones of 8
    masked = next(r for r in rows if r.sampler == "poisson_masked")
    assert masked.ratio_to_nonprivate is None and masked.ratio_to_reference is not None


def test_opacus_peer_rows_run_opacus_itself(compose_run, tmp_path) -> None:
    """opacus_hooks and opacus_ghost: Opacus' make_private and BatchMemoryManager, in the same
    process; a setting Opacus is not run under is skipped with its reason."""
    from dpresearch.benchmark.runner import Variant, benchmark

    variants = [Variant("opacus_hooks", physical=8), Variant("opacus_ghost", physical=8),
                Variant("opacus_hooks", sampler="poisson_masked", physical=8),
                Variant("dp_hooks", compile=True, physical=8)]  # fmt: skip
    rows, skipped = benchmark(compose_run, variants, batch_size=16, steps=2, warmup=1,
                              rounds=1, workdir=tmp_path)  # fmt: skip
    assert [r.method for r in rows] == ["opacus_hooks", "opacus_ghost"]
    assert all(r.examples_per_s > 0 and r.peak_memory_mb > 0 for r in rows)
    reasons = {s["method"]: s["reason"] for s in skipped}
    assert "Opacus" in reasons["opacus_hooks"] and "bk engine" in reasons["dp_hooks"]


def test_benchmark_is_a_wandb_run_of_job_type_benchmark(monkeypatch, tmp_path) -> None:
    import wandb
    from omegaconf import OmegaConf

    from dpresearch.benchmark.__main__ import log_to_wandb

    seen = {}

    class FakeRun:
        summary: dict = {}

        def log(self, data):
            seen["table"] = data["benchmark"]

        def finish(self):
            seen["finished"] = True

    monkeypatch.setattr(wandb, "init", lambda **kw: seen.update(kw) or FakeRun())
    logger = {"_target_": "dpresearch.tracking.loggers.wandb_logger", "project": "p", "mode": None}
    cfg = OmegaConf.create({"name": "bench", "logger": logger})
    row = {"scope": "full", "method": "dp_bk", "examples_per_s": 10.0, "peak_memory_mb": 5.0,
           "ratio_to_nonprivate": 0.5}  # fmt: skip
    record = {"rows": [row], "choices": {}, "config": {"bench": {}}, "device": "cpu"}
    log_to_wandb(cfg, record, tmp_path)
    assert seen["job_type"] == "benchmark" and seen["group"] == "bench" and seen["finished"]
    assert FakeRun.summary["full/dp_bk/examples_per_s"] == 10.0


def test_synthetic_data_needs_no_files(tmp_path) -> None:
    """The benchmark's data: random examples of the dataset's shape; a dataset whose files
    are absent (CIFAR-10 here, offline) is never read."""
    from dpresearch.data.samplers import PoissonSampling
    from dpresearch.data.vision import CIFAR10DataModule

    dm = CIFAR10DataModule(data_dir=str(tmp_path))
    dm.use_synthetic(40)
    dm.attach_sampler(PoissonSampling(expected_batch_size=8), 0)
    dm.prepare_data()
    dm.setup("fit")
    x, y = dm.train_set.__getitems__(list(range(40)))
    assert dm.num_train == 40 and x.shape == (40, 3, 32, 32) and y.max() < 10
    with pytest.raises(ValueError, match="at least 1 example"):
        dm.use_synthetic(0)


def test_bench_axes_default_to_the_run_config() -> None:
    from omegaconf import OmegaConf

    from dpresearch.benchmark.__main__ import axes_of, key_of
    from dpresearch.benchmark.runner import variants_of

    cfg = OmegaConf.create({"bench": {"batch_size": 64, "scopes": ["full"], "samplers": None,
                                      "compile": [False, True], "physical": None,
                                      "precision": None},
                            "sampler": {"max_physical_batch_size": 256},
                            "trainer": {"compile": False, "precision": "32-true"}})  # fmt: skip
    axes = axes_of(cfg, {"sampler": "poisson_masked"})
    assert axes == {"scope": ["full"], "sampler": ["poisson_masked"], "compile": [False, True],
                    "physical": [64], "precision": ["32-true"]}  # fmt: skip
    assert len(variants_of(["nonprivate", "dp_bk"], axes)) == 4
    assert key_of("++trainer.limit_val_batches=0") == "trainer.limit_val_batches"


def test_a_variant_drops_the_settings_of_a_group_it_switches() -> None:
    from dpresearch.benchmark.__main__ import merge_overrides

    user = ["privacy.noise_multiplier=1.0", "finetune.rank=4", "model=wrn16_4", "sampler=shuffle"]
    choices = {"privacy": "dp", "finetune": "lora", "sampler": "shuffle"}
    merged = merge_overrides(user, ["privacy=none", "finetune=full", "sampler=poisson"], choices)
    assert merged == ["model=wrn16_4", "privacy=none", "finetune=full", "sampler=poisson"]
    kept = merge_overrides(user, ["privacy=dp", "finetune=lora", "sampler=shuffle"], choices)
    assert kept[:2] == ["privacy.noise_multiplier=1.0", "finetune.rank=4"]
