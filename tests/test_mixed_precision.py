"""trainer.precision=bf16-mixed in private runs: norms, clipped sums and noise in float32.

Under autocast the forward runs in bf16, so activations and output gradients arrive in bf16.
The engines (bk, hooks, vmap) take each example's norm and its share of the clipped sum from
the same float32 tensors. Checked here: the sums are float32 and agree with a per-example
brute force run under the same autocast, within bf16 rounding; each example's clipped
contribution is at most C as exactly as in float32 (the sensitivity the accountant assumes);
the ghost engine, whose second backward re-rounds, is refused; a bf16 run trains end to end.
"""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch.nn import functional as F

from dpresearch.privacy.engines import make_engine
from dpresearch.privacy.self_check import LossModule
from dpresearch.privacy.spec import FixedClipping
from dpresearch.trainer_settings import check_engine_precision, check_trainer
from tests.helpers.models import MODELS, data
from tests.helpers.references import brute_force_sum, losses, one

ENGINES = ["bk", "hooks", "vmap"]


def bf16_losses(model, x, y):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return losses(model, x, y)


def bf16_engine_sum(model, x, y, engine: str, factors, chunks: int = 1) -> list[torch.Tensor]:
    """The engine's clipped sum with the forward under bf16 autocast, as Lightning's
    bf16-mixed runs training_step; one physical batch per chunk."""
    module = LossModule(model, lambda m, batch: losses(m, *batch)["example_losses"])
    eng = make_engine(engine, module, factors)
    try:
        size = -(-len(y) // chunks)
        for i in range(0, len(y), size):
            xs, ys = x[i : i + size], y[i : i + size]
            eng.run(partial(bf16_losses, model, xs, ys), (xs, ys))
        return eng.take_sums()
    finally:
        eng.close()


def bf16_brute_force_sum(model, x, y, factors) -> list[torch.Tensor]:
    """Each example's gradient from its own backward through the bf16 forward, its norm in
    float64, clipped, summed in float32."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(y)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(one(x, i)), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).float()
        factor = factors(norm.reshape(1))[0]
        for t, g in zip(total, grads):
            t += factor * g.float()
    return total


def max_error(got, want) -> float:
    scale = max(float(w.abs().max()) for w in want)
    return max(float((g - w).abs().max()) for g, w in zip(got, want)) / scale


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model_name", ["cnn", "vit", "conv1d"])
def test_bf16_clipped_sum_is_float32_and_matches_brute_force(model_name, engine) -> None:
    torch.manual_seed(0)
    model = MODELS[model_name]()
    x, y = data(model_name, 6)
    factors = FixedClipping(max_grad_norm=0.5).factors
    got = bf16_engine_sum(model, x, y, engine, factors, chunks=2)
    assert all(g.dtype == torch.float32 for g in got)
    if engine == "vmap":  # torch.func differentiates the float32 function: exact
        want = brute_force_sum(copy.deepcopy(model), x, y, factors)
        assert max_error(got, want) < 1e-5
        return
    want = bf16_brute_force_sum(copy.deepcopy(model), x, y, factors)
    # bf16 keeps 8 significant bits: rounding differences between a batch of 3 and single
    # examples (other kernels, other summation orders) stay within a few of its ulps.
    assert max_error(got, want) < 3e-2, max_error(got, want)
    fp32 = brute_force_sum(copy.deepcopy(model), x, y, factors)
    assert max_error(got, fp32) < 0.25  # the bf16 network's own distance from float32


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model_name", ["cnn", "vit"])
def test_bf16_contribution_of_each_example_is_at_most_c(model_name, engine) -> None:
    """One example per physical batch: the clipped sum IS that example's contribution. With
    C far below every norm, each must have norm C (to float32 rounding), never more."""
    torch.manual_seed(1)
    model = MODELS[model_name]()
    x, y = data(model_name, 4)
    clip = 1e-3
    factors = FixedClipping(max_grad_norm=clip).factors
    for i in range(len(y)):
        xs, ys = one(x, i), y[i : i + 1]
        got = bf16_engine_sum(model, xs, ys, engine, factors)
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in got))
        assert norm <= clip * (1 + 1e-5), (i, float(norm))
        assert norm >= clip * (1 - 1e-3)  # clipped, not vanished


def test_ghost_and_half_precisions_are_refused_bf16_mixed_is_not() -> None:
    from omegaconf import OmegaConf

    with pytest.raises(ValueError, match="engine=ghost with trainer.precision=bf16-mixed"):
        check_engine_precision("ghost", "bf16-mixed")
    check_engine_precision("bk", "bf16-mixed")
    check_engine_precision("ghost", "32-true")
    for precision, message in (("bf16-true", "half precision"), ("16-mixed", "GradScaler")):
        with pytest.raises(ValueError, match=message):
            check_trainer(OmegaConf.create({"precision": precision, "max_epochs": 1}), True, False)
    check_trainer(OmegaConf.create({"precision": "bf16-mixed", "max_epochs": 1}), True, False)


def test_bf16_mixed_private_run_trains_with_float32_noise(compose_cfg, tmp_path, monkeypatch):
    """A private bf16-mixed run: the noise is drawn in float32 on float32 sums, the
    parameters stay float32, and the summary records the precision."""
    from dpresearch.privacy import step
    from dpresearch.train import run

    dtypes = []
    noised = step.noised

    def record(sums, *args, **kwargs):
        out = noised(sums, *args, **kwargs)
        dtypes.extend({s.dtype for s in out})
        return out

    monkeypatch.setattr(step, "noised", record)
    monkeypatch.setattr("dpresearch.privacy.strategy.noised", record)
    cfg = compose_cfg(["trainer.precision=bf16-mixed", "trainer.max_epochs=1", "logger=none",
                       "clipping.engine=bk", "trainer.enable_progress_bar=false"])  # fmt: skip
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["precision"] == "bf16-mixed"
    assert dtypes and set(dtypes) == {torch.float32}


@pytest.mark.parametrize("engine", ["hooks", "ghost"])
def test_float32_rules_belong_to_the_engine_not_to_opacus(engine) -> None:
    """The engine's Opacus module reads float32 through its own copies of the rule
    registries; Opacus' class-wide registries (what a direct user of Opacus gets in the same
    process, e.g. the benchmark's opacus_* rows) are left unwrapped."""
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    made = make_engine(engine, torch.nn.Linear(3, 2), FixedClipping(1.0).factors)
    try:
        own = made.gsm.GRAD_SAMPLERS[torch.nn.Linear]
        assert getattr(own, "float32_inputs", False)
        for registry in (GradSampleModule.GRAD_SAMPLERS,
                         GradSampleModuleFastGradientClipping.GRAD_SAMPLERS,
                         GradSampleModuleFastGradientClipping.NORM_SAMPLERS):  # fmt: skip
            assert not any(getattr(s, "float32_inputs", False) for s in registry.values())
    finally:
        made.close()
