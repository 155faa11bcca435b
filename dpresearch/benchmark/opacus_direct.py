"""The peer rows: Opacus used directly, as its README teaches, on the benchmark's data and model.

``PrivacyEngine.make_private`` (Poisson sampling by Opacus' own ``DPDataLoader``,
``grad_sample_mode`` hooks or ghost), ``BatchMemoryManager`` to split a logical batch into
physical ones, and the plain loop ``zero_grad / loss.backward() / optimizer.step()``. Nothing
of dpresearch's DP code runs here: these rows say how fast the library most people use is,
measured in the same process as our engines, so "faster than Opacus" is against Opacus
itself. Its loop has no accountant call, logger or callback per step (the README calls the
accountant once at the end).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader

from dpresearch.benchmark.memory import TransientPeak, persistent_bytes
from dpresearch.data.base import _identity_collate


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def opacus_block(cfg: Any, variant: Any, examples: int, warmup: int, steps: int):
    """One block (``warmup + steps + 1`` logical steps, one epoch of ``examples``) of
    Opacus' own DP-SGD."""
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    from dpresearch.benchmark.runner import Block
    from dpresearch.train import build, build_model, resolve_device

    torch.manual_seed(cfg.seed)
    datamodule = build(cfg.dataset)
    datamodule.use_synthetic(examples)
    datamodule.attach_sampler(build(cfg.sampler), cfg.seed)
    datamodule.setup("fit")
    device = resolve_device(cfg.trainer.get("accelerator", "auto"))
    model = build_model(cfg.model, datamodule, build(cfg.finetune)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.optimizer)(params)
    loader = DataLoader(datamodule.train_set, batch_size=cfg.sampler.expected_batch_size,
                        collate_fn=_identity_collate)  # fmt: skip
    mode = variant.method.removeprefix("opacus_")
    engine = PrivacyEngine()
    private = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(),
        data_loader=loader,
        noise_multiplier=1.0,  # the noise costs the same at any sigma
        max_grad_norm=float(cfg.clipping.max_grad_norm),
        poisson_sampling=True,
        grad_sample_mode=mode,
    )
    if mode == "ghost":
        model, optimizer, criterion, loader = private
    else:
        model, optimizer, loader = private
        criterion = nn.CrossEntropyLoss()
    done, t0, seconds, peak = 0, 0.0, None, None
    probe = TransientPeak(device)
    try:
        with BatchMemoryManager(data_loader=loader, max_physical_batch_size=variant.physical,
                                optimizer=optimizer) as physical:  # fmt: skip
            starting = True
            for x, y in physical:
                if starting and done == warmup + steps:
                    probe.start()
                starting = False
                x, y = _to((x, y), device)
                optimizer.zero_grad(set_to_none=True)
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
                if optimizer._is_last_step_skipped:
                    continue  # a physical batch inside a logical one
                done, starting = done + 1, True
                if done == warmup:
                    _sync(device)
                    t0 = time.perf_counter()
                elif done == warmup + steps:
                    _sync(device)
                    seconds = time.perf_counter() - t0
                elif done == warmup + steps + 1:
                    peak = probe.stop() + persistent_bytes(model, optimizer.original_optimizer)
    finally:
        if hasattr(model, "_close"):  # Opacus' wrapper: remove its hooks
            model._close()
    if seconds is None or peak is None:
        raise RuntimeError(f"{variant.method}: Opacus' loader ended after {done} logical steps")
    return Block(seconds, steps, peak)
