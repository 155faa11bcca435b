"""The scaling study's step-time model and its CLI (projection from a given measurement)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from experiments.scaling import study as scaling
from experiments.scaling.step_time import (
    Workload,
    expected_max_share,
    hierarchical_allreduce_s,
    ring_allreduce_s,
)


def test_ring_allreduce_time() -> None:
    assert ring_allreduce_s(1e9, 1, 1e10, 1e-5) == 0
    # Two peers: each sends and receives half the buffer twice (reduce-scatter, all-gather).
    assert ring_allreduce_s(1e9, 2, 1e10, 1e-5) == pytest.approx(1e9 / 1e10 + 2e-5)
    # Large rings approach 2 S / B.
    assert ring_allreduce_s(1e9, 1000, 1e10, 0) == pytest.approx(0.2, rel=1e-2)
    # Within one node the hierarchy is just the ring; beyond, the network term is added.
    one_node = hierarchical_allreduce_s(1e9, 8, 8, 1e11, 1e10, 0)
    assert one_node == pytest.approx(ring_allreduce_s(1e9, 8, 1e11, 0))
    assert hierarchical_allreduce_s(1e9, 16, 8, 1e11, 1e10, 0) == pytest.approx(
        one_node + ring_allreduce_s(1e9, 2, 1e10, 0)
    )


def test_slowest_rank_share_follows_the_binomial_maximum() -> None:
    assert expected_max_share(10_000, 400, 4, independent=False) == 100
    assert expected_max_share(10_000, 400, 1) == 400
    # Two ranks: E[max of 2 normals] = sigma / sqrt(pi) above the mean.
    n, batch = 100_000, 2000
    share = expected_max_share(n, batch, 2, draws=20_000)
    q, per = batch / n, batch / 2
    assert share == pytest.approx(per + math.sqrt(per * (1 - q)) / math.sqrt(math.pi), rel=2e-3)
    # The relative straggler cost grows as each rank's share shrinks.
    rel = [expected_max_share(n, batch, w) * w / batch for w in (2, 8, 32)]
    assert 1 < rel[0] < rel[1] < rel[2]


def test_overlap_hides_at_most_the_backward() -> None:
    work = Workload(1e-3, 0, 100, 10_000, overlap=1.0)
    assert work.step_s(1, 0.01) == pytest.approx(0.1 + 0.01 - 0.01)  # fully hidden
    assert work.step_s(1, 1.0) == pytest.approx(0.1 + 1.0 - 0.1 * 2 / 3)  # backward's share
    none = Workload(1e-3, 0, 100, 10_000, overlap=0.0)
    assert none.throughput(2, 0.0) == pytest.approx(2 * none.throughput(1, 0.0))


def test_allreduce_benchmark_runs_two_processes() -> None:
    assert scaling.allreduce_ms(1, 1e6) == 0
    assert 0 < scaling.allreduce_ms(2, 4e5, repeats=5) < 1000


def test_projection_cli_from_a_measurement(tmp_path) -> None:
    rows = [
        {"round": 0, "method": m, "world_size": w, "examples_per_s": x,
         "allreduce_ms_per_step": 2.0, "allreduce_mb_per_step": 0.2, "expected_batch_size": 256,
         "num_train": 1294, "steps": 30, "pure_allreduce_ms": 0.5 if w > 1 else 0.0}
        for m, w, x in [("nonprivate", 1, 4000), ("nonprivate", 2, 7000), ("dp_bk", 1, 2000),
                        ("dp_bk", 2, 3600)]
    ]  # fmt: skip
    # One process at half the batch: T = o + c B. dp_bk: 128 ms and 64 ms, so o = 0.
    rows += [{**rows[0], "method": m, "expected_batch_size": 128, "examples_per_s": x}
             for m, x in [("nonprivate", 3000), ("dp_bk", 128 / 0.064)]]  # fmt: skip
    scaling.write_csv(tmp_path / "measured.csv", rows)
    scaling.main(["--out", str(tmp_path), "--project-only"])
    for name in ("model_check.csv", "projection.csv", "assumptions.json", "scaling.png"):
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "projection.csv") as f:
        proj = list(csv.DictReader(f))
    eff = {(r["method"], int(r["gpus"])): float(r["efficiency"]) for r in proj}
    assert all(v == pytest.approx(1.0) for (m, g), v in eff.items() if g == 1)
    assert all(0 < v <= 1.0 + 1e-9 for v in eff.values())
    with open(tmp_path / "model_check.csv") as f:
        check = {(r["method"], int(r["world_size"])): r for r in csv.DictReader(f)}
    # One process: the model is fitted there, so it reproduces the measurement.
    assert float(check[("dp_bk", 1)]["model_examples_per_s"]) == pytest.approx(2000, rel=1e-6)
    assert float(check[("dp_bk", 1)]["fit_step_overhead_ms"]) == pytest.approx(0.0, abs=1e-6)
    assert float(check[("dp_bk", 1)]["fit_us_per_example"]) == pytest.approx(500, rel=1e-6)
    assert float(check[("nonprivate", 1)]["fit_step_overhead_ms"]) == pytest.approx(21.33, 1e-3)
    assert np.isfinite(float(check[("dp_bk", 2)]["model_examples_per_s"]))
    assert len(check) == 4  # the half-batch rows only fit the model
