"""The benchmark runs end to end (tiny config, not timed) and its memory accounting is real."""

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
           "bench.scopes=[full,bias_only]",
           f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "WANDB_MODE": "disabled"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    rows = {(r["scope"], r["method"]): r for r in record["rows"]}
    methods = ["nonprivate", "dp_hooks", "dp_ghost", "dp_bk"]
    assert list(rows) == [(s, m) for s in ("full", "bias_only") for m in methods]
    assert rows["full", "nonprivate"]["ratio_to_nonprivate"] == 1.0
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
