"""Privacy units of several rows (a user's examples, an example's augmented views) against a
brute-force loop: each unit's gradient is the weighted sum of its rows' gradients, each from
its own backward pass, clipped ONCE; every engine that can, through physical batches cut
between units."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch.nn import functional as F

from dpresearch.privacy.engines import make_engine
from dpresearch.privacy.engines.ghost import UNITS_REFUSAL
from dpresearch.privacy.self_check import LossModule
from dpresearch.privacy.spec import AutomaticClipping, FixedClipping, PerLayerClipping
from dpresearch.privacy.units import UnitBatch, Units, split_units, unwrap
from tests.helpers.models import MODELS, data
from tests.helpers.references import assert_sums_close, losses, one

CLIPPINGS = {
    "fixed": FixedClipping(max_grad_norm=0.5),
    "automatic": AutomaticClipping(max_grad_norm=0.5, gamma=0.01),
    "per_layer": PerLayerClipping(max_grad_norm=0.5),
}
IDS = torch.tensor([3, 3, 3, 0, 7, 7, 1, 1, 1, 1])  # units of 3, 1, 2 and 4 rows
WEIGHTS = torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0])


def brute_force_units(model, x, y, ids, weights, clipping) -> list[torch.Tensor]:
    """sum_u factor(||G_u||) G_u with G_u = sum_{i in u} w_i g_i, each g_i on its own."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for u in torch.unique_consecutive(ids):
        rows = (ids == u).nonzero(as_tuple=True)[0].tolist()
        unit = [torch.zeros_like(p) for p in params]
        for i in rows:
            loss = F.cross_entropy(model(one(x, i)), y[i : i + 1])
            for acc, g in zip(unit, torch.autograd.grad(loss, params)):
                acc += weights[i] * g
        norms = torch.stack([g.double().norm() for g in unit]).float().unsqueeze(0)
        if clipping.per_layer:
            factor = clipping.factors(norms)[0]
        else:
            factor = clipping.factors(norms.norm(2, dim=1)).expand(len(params))
        for t, g, f in zip(total, unit, factor):
            t += f * g
    return total


def engine_units_sum(model, x, y, engine: str, clipping, size: int):
    module = LossModule(model, lambda m, batch: losses(m, *batch)["example_losses"])
    eng = make_engine(engine, module, clipping.factors, clipping.per_layer)
    batch, units = unwrap(UnitBatch((x, y), IDS[: len(y)], WEIGHTS[: len(y)]))
    try:
        chunks = split_units(batch, units, size)
        for (xs, ys), chunk_units in chunks:
            eng.run(partial(losses, model, xs, ys), (xs, ys), chunk_units)
        return eng.take_sums(), len(chunks)
    finally:
        eng.close()


@pytest.mark.parametrize("engine", ["hooks", "bk", "vmap"])
@pytest.mark.parametrize("clipping", CLIPPINGS)
@pytest.mark.parametrize("model_name", ["cnn", "text", "conv1d", "vit"])
def test_unit_clipped_sum_equals_brute_force(model_name: str, clipping: str, engine: str) -> None:
    torch.manual_seed(0)
    model = MODELS[model_name]()
    x, y = data(model_name, len(IDS))
    spec = CLIPPINGS[clipping]
    want = brute_force_units(copy.deepcopy(model), x, y, IDS, WEIGHTS, spec)
    got, chunks = engine_units_sum(model, x, y, engine, spec, size=5)
    assert chunks == 3  # [3 + 1], [2], [4]: no unit cut in two
    assert_sums_close(got, want)


def test_units_matter() -> None:
    """Guard against a comparison that cannot fail: clipping each row on its own differs."""
    torch.manual_seed(0)
    model, (x, y) = MODELS["cnn"](), data("cnn", len(IDS))
    spec = CLIPPINGS["fixed"]
    grouped = brute_force_units(copy.deepcopy(model), x, y, IDS, WEIGHTS, spec)
    per_row = brute_force_units(copy.deepcopy(model), x, y, torch.arange(len(IDS)), WEIGHTS, spec)
    assert not torch.allclose(grouped[0], per_row[0], rtol=1e-3, atol=1e-6)


def test_a_unit_contributes_at_most_c() -> None:
    """A unit of many rows with large gradients still moves the clipped sum by at most C."""
    torch.manual_seed(0)
    model, (x, y) = MODELS["cnn"](), data("cnn", 6)
    ids, clip = torch.zeros(6, dtype=torch.long), 1e-3
    module = LossModule(model, lambda m, batch: losses(m, *batch)["example_losses"])
    for engine in ("hooks", "bk", "vmap"):
        eng = make_engine(engine, module, FixedClipping(max_grad_norm=clip).factors)
        eng.run(partial(losses, model, x, y), (x, y), Units.from_ids(ids))
        total = torch.sqrt(sum(s.double().pow(2).sum() for s in eng.take_sums()))
        eng.close()
        assert float(total) <= clip * (1 + 1e-4), engine


def test_ghost_refuses_units_by_name() -> None:
    model, (x, y) = MODELS["cnn"](), data("cnn", 4)
    module = LossModule(model, lambda m, batch: losses(m, *batch)["example_losses"])
    eng = make_engine("ghost", module, FixedClipping().factors)
    with pytest.raises(ValueError, match="clipping.engine=bk, hooks or vmap"):
        eng.run(partial(losses, model, x, y), (x, y), Units.from_ids(torch.tensor([0, 0, 1, 1])))
    eng.close()
    assert "privacy.unit=user" in UNITS_REFUSAL


def test_split_units_cuts_between_units_only() -> None:
    ids = torch.tensor([4, 4, 9, 9, 9, 9, 9, 2, 5, 5])
    units = Units.from_ids(ids)
    x = torch.arange(len(ids))
    for size in range(1, 12):
        chunks = split_units(x, units, size)
        assert torch.equal(torch.cat([c for c, _ in chunks]), x)  # every row, in order
        for c, u in chunks:
            labels = ids[c]
            assert len(c) <= size or len(torch.unique(labels)) == 1  # oversize: one unit
            for label in torch.unique(labels):  # every unit whole in one chunk
                assert int((labels == label).sum()) == int((ids == label).sum())
            assert torch.equal(u.index, torch.unique_consecutive(labels, return_inverse=True)[1])


def test_units_refuse_a_unit_split_across_the_batch() -> None:
    with pytest.raises(ValueError, match="adjacent"):
        Units.from_ids(torch.tensor([1, 2, 1]))


@pytest.mark.parametrize("engine", ["hooks", "bk", "vmap"])
def test_the_strategy_clips_each_unit_once(engine: str) -> None:
    """Through Lightning: a logical batch of units, cut into physical batches of at most 5
    rows between units; sigma = 0, so the SGD step is -lr * (sum of clipped units) / E."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from dpresearch.data.base import TensorSet
    from dpresearch.module import ClassificationModule
    from tests.conftest import dp_strategy

    torch.manual_seed(0)
    model, (x, y) = MODELS["cnn"](), data("cnn", len(IDS))
    spec = CLIPPINGS["fixed"]
    want = brute_force_units(copy.deepcopy(model), x, y, IDS, WEIGHTS, spec)
    before = [p.detach().clone() for p in model.parameters()]
    loader = DataLoader(TensorSet(x, y), batch_sampler=[list(range(len(IDS)))],
                        collate_fn=lambda b: UnitBatch(b, IDS, WEIGHTS))  # fmt: skip
    strategy = dp_strategy(0.0, spec.max_grad_norm, expected_batch_size=4, max_physical=5,
                           engine=engine)  # fmt: skip
    module = ClassificationModule(model, optimizer=partial(torch.optim.SGD, lr=1.0))
    trainer = pl.Trainer(strategy=strategy, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    got = [(b - p.detach()) * 4 for b, p in zip(before, model.parameters())]
    assert_sums_close(got, want)
    assert strategy.step_examples == 4  # four real units


def test_views_are_units_of_k_augmented_copies() -> None:
    """privacy.augmentations=K: K views of each row, each example's views one unit with
    weights 1/K (its gradient the average over views); the views differ (augmented); a
    padding row stays padding."""
    from dpresearch.data.digits import DigitsDataModule
    from dpresearch.data.padding import PAD_LABEL

    torch.manual_seed(0)  # the augmentation draws from torch's global generator
    dm = DigitsDataModule(augment=True)
    dm.attach_views(4)
    dm.trainer = type("T", (), {"training": True})()
    x = torch.randn(3, 1, 8, 8)
    y = torch.tensor([1, 2, PAD_LABEL])
    out = dm.on_after_batch_transfer((x, y), 0)
    units = out.units()
    assert units.count == 3 and units.sizes().tolist() == [4, 4, 4]
    assert torch.allclose(out.weights, torch.full((12,), 0.25))
    xs, ys = out.batch
    assert ys.tolist() == [1] * 4 + [2] * 4 + [PAD_LABEL] * 4
    assert len({tuple(v.flatten().tolist()) for v in xs[:4]}) > 1  # augmented differently
    with pytest.raises(ValueError, match="dataset.augment=true"):
        DigitsDataModule(augment=False).attach_views(2)


def test_augmentations_is_checked_by_name() -> None:
    from dpresearch.privacy.spec import DPSpec, PrivacyConfigError

    for bad in (0, 2.5, "4"):
        with pytest.raises(PrivacyConfigError, match="privacy.augmentations"):
            DPSpec(augmentations=bad)


def test_a_unit_larger_than_the_physical_batch_is_refused(compose_cfg, tmp_path) -> None:
    from dpresearch.train import run

    with pytest.raises(ValueError, match="sampler.max_physical_batch_size=2"):
        run(compose_cfg(["logger=none", "dataset.augment=true", "privacy.augmentations=4",
                         "sampler.max_physical_batch_size=2"]), tmp_path)  # fmt: skip
