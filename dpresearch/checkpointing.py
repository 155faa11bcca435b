"""Checkpoints of a run and resuming from them (without losing the privacy budget).

Every epoch end writes ``<run>/checkpoints/last.ckpt``. Lightning writes it atomically: the
bytes go to a temporary file that is then moved over the old one, so a crash while saving
leaves the previous checkpoint whole. A checkpoint holds the model, the optimizer, the loop
counters, the sampler's generator (the DataModule's state), the DP state (``PrivacyState``)
and the global random number generators (``RandomState``): a resumed run draws exactly what
the uninterrupted run would have drawn.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

LAST = "last.ckpt"


class RandomState(pl.Callback):
    """Saves and restores torch's global generators (dropout, augmentation, data order)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng_state"] = state

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        state = checkpoint.get("rng_state")
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_callback(out: Path) -> ModelCheckpoint:
    """last.ckpt at every training epoch end, each replacing the one before (with no monitor,
    Lightning's top-1 is the newest)."""
    return ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename=Path(LAST).stem,
        save_top_k=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )


def resume_path(cfg: DictConfig, out: Path) -> str | None:
    """The checkpoint to continue from: ``ckpt_path=FILE``, or with ``run.resume=true`` this
    run folder's last checkpoint. Missing files are refused before anything is built."""
    explicit = cfg.get("ckpt_path")
    resume = cfg.get("run", {}).get("resume", False)
    if explicit and resume:
        raise ValueError("give either ckpt_path=FILE or run.resume=true, not both")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ValueError(f"ckpt_path={explicit} is not a file")
        return str(path)
    if resume:
        path = out / "checkpoints" / LAST
        if not path.is_file():
            raise ValueError(
                f"run.resume=true but {path} does not exist: pass the interrupted run's folder "
                "as hydra.run.dir=<folder>, or give ckpt_path=<file>"
            )
        return str(path)
    return None
