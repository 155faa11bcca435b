"""Checkpoints of parameter-efficient runs (bias-only, LoRA, head-only) hold only what was
trained: the trainable parameters, the buffers, the optimizer state. The frozen base (the
pretrained weights, 90 MB for MiniLM against 26k trainable numbers) is left out and replaced
by a reference: its parameter names and a sha256 digest of their values. Loading rebuilds the
base from the run's config and refuses it unless it hashes to the same digest."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

KEY = "frozen_base"


class FrozenBaseMismatch(ValueError):
    """The frozen base rebuilt now is not the one the checkpoint was trained on."""


def frozen_keys(module: nn.Module) -> list[str]:
    """state_dict keys of the parameters that are not trained (tied names included)."""
    frozen = {id(p) for p in module.parameters() if not p.requires_grad}
    state = module.state_dict(keep_vars=True)
    return sorted(k for k, v in state.items() if isinstance(v, nn.Parameter) and id(v) in frozen)


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def strip_frozen(module: nn.Module, checkpoint: dict) -> None:
    """Drop the frozen parameters from a checkpoint about to be saved (when there are any),
    recording their names, count and digest under ``frozen_base``."""
    keys = frozen_keys(module)
    state = checkpoint.get("state_dict")
    if not keys or state is None:
        return
    base = {k: state.pop(k) for k in keys if k in state}
    checkpoint[KEY] = {"keys": sorted(base), "numel": sum(t.numel() for t in base.values()),
                       "sha256": digest(base)}  # fmt: skip


def restore_frozen(module: nn.Module, checkpoint: dict) -> None:
    """Put the frozen base of ``module`` (rebuilt from the run's config) back into a stripped
    checkpoint, after checking it is the same base, so a strict load follows."""
    record = checkpoint.get(KEY)
    if record is None:
        return
    current = module.state_dict()
    missing = [k for k in record["keys"] if k not in current]
    if missing:
        raise FrozenBaseMismatch(
            f"the checkpoint's frozen base has {len(missing)} parameters this model lacks "
            f"(e.g. {missing[0]}): rebuild the model exactly as the run did (its config.yaml)"
        )
    base = {k: current[k] for k in record["keys"]}
    if digest(base) != record["sha256"]:
        raise FrozenBaseMismatch(
            "the frozen base rebuilt from the config (pretrained weights, or the seeded random "
            "initialisation) is not the one this checkpoint was trained on (sha256 differs): "
            "the same model.name must give the same weights; a different pretrained version "
            "or seed cannot resume or evaluate this checkpoint"
        )
    checkpoint["state_dict"].update(base)
