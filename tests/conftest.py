"""Shared test helpers: compose real configs, run one DP step through the real strategy."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub (it reads this once): no network here, fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from dpresearch.data.base import TensorSet, _identity_collate  # noqa: E402
from dpresearch.module import ClassificationModule  # noqa: E402
from dpresearch.privacy.strategy import DPStrategy  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides) -> DictConfig, as `python run.py <overrides>` would build it."""

    def _compose(overrides: list[str] | None = None, return_hydra_config: bool = False):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(
                "config", overrides=overrides or [], return_hydra_config=return_hydra_config
            )

    yield _compose
    GlobalHydra.instance().clear()


def fit_batches(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: list[list[int]],
    strategy: pl.strategies.Strategy,
    lr: float = 1.0,
) -> pl.Trainer:
    """Train ``model`` for exactly the given logical batches with plain SGD (no momentum)."""
    module = ClassificationModule(model, optimizer=partial(torch.optim.SGD, lr=lr))
    loader = DataLoader(TensorSet(x, y), batch_sampler=batches, collate_fn=_identity_collate)
    trainer = pl.Trainer(
        strategy=strategy,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=loader)
    return trainer


def dp_strategy(
    noise: float,
    clip: float,
    expected_batch_size: int,
    max_physical: int = 256,
    seed: int = 0,
    engine: str = "hooks",
    factors=None,
) -> DPStrategy:
    return DPStrategy(
        engine=engine,
        factors=factors,
        noise_multiplier=noise,
        max_grad_norm=clip,
        expected_batch_size=expected_batch_size,
        sample_rate=0.1,
        delta=1e-5,
        accountant="rdp",
        max_physical_batch_size=max_physical,
        noise_seed=seed,
    )
